"""The admin's "spend by key" page: who spent what today, this month, in the
last 30 days and in all, from the daily usage rows (``jobs.usage``), sortable
by each column. Kept apart from ``ApiKeyAdmin`` (a proxy model), read-only."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin
from django.db.models import F, FloatField, IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from apikeys.models import KeySpend
from jobs.models import UsageDaily

_MONEY = FloatField()


def _spent(since: dt.date | None, figure: str = "money"):
    rows = UsageDaily.objects.filter(api_key=OuterRef("pk"))
    if since is not None:
        rows = rows.filter(day__gte=since)
    total = F("cost_usd") + F("provider_cost_usd") if figure == "money" else F("jobs")
    field = _MONEY if figure == "money" else IntegerField()
    summed = rows.order_by().values("api_key").annotate(total=Sum(total, output_field=field)).values("total")
    return Coalesce(Subquery(summed, output_field=field), Value(0, output_field=field), output_field=field)


@admin.register(KeySpend)
class KeySpendAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "spent_today",
        "spent_month",
        "spent_30_days",
        "spent_all_time",
        "jobs_30_days",
        "budget",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    show_full_result_count = False

    def get_queryset(self, request):
        today = timezone.localdate(timezone.now(), dt.UTC)
        return (
            super()
            .get_queryset(request)
            .annotate(
                today_usd=_spent(today),
                month_usd=_spent(today.replace(day=1)),
                last30_usd=_spent(today - dt.timedelta(days=29)),
                all_usd=_spent(None),
                jobs30=_spent(today - dt.timedelta(days=29), "jobs"),
            )
            # Here rather than ``ordering``: the admin would order before the annotations exist.
            .order_by("-month_usd", "name")
        )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @staticmethod
    def _usd(value) -> str:
        return f"${value or 0:,.4f}"

    @admin.display(description="today (UTC)", ordering="today_usd")
    def spent_today(self, obj) -> str:
        return self._usd(obj.today_usd)

    @admin.display(description="this month", ordering="month_usd")
    def spent_month(self, obj) -> str:
        return self._usd(obj.month_usd)

    @admin.display(description="last 30 days", ordering="last30_usd")
    def spent_30_days(self, obj) -> str:
        return self._usd(obj.last30_usd)

    @admin.display(description="all time", ordering="all_usd")
    def spent_all_time(self, obj) -> str:
        return self._usd(obj.all_usd)

    @admin.display(description="jobs (30 days)", ordering="jobs30")
    def jobs_30_days(self, obj) -> int:
        return obj.jobs30

    @admin.display(description="budget day / month")
    def budget(self, obj) -> str:
        day = f"${obj.budget_daily_usd}" if obj.budget_daily_usd is not None else "none"
        month = f"${obj.budget_monthly_usd}" if obj.budget_monthly_usd is not None else "none"
        return f"{day} / {month}"
