"""``GET /usage``: the caller's own spend, from the daily usage rows (``jobs.usage``)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers

from claudesvc.errors import ServiceError
from claudesvc.fields import RefusesEmptyValues
from jobs.jobs_api.envelope import ErrorEnvelope, JobsAPIView, envelope, ok
from jobs.models import Job, JobStatus
from jobs.services import owner_limits
from jobs.usage import GROUPS, owner_spend, usage_summary

# Longest period one request may cover (a year and a day, so any calendar year fits).
USAGE_MAX_DAYS = 366


class UsageQuery(RefusesEmptyValues):
    # "from" is a Python keyword: declared below under its real name.
    to = serializers.DateField(
        required=False,
        input_formats=["iso-8601"],
        help_text="Last day (UTC, YYYY-MM-DD), included; default today",
    )
    group_by = serializers.ChoiceField(
        choices=sorted(GROUPS), required=False, default="day", help_text="One row per day, model or source"
    )

    def validate(self, attrs):
        today = timezone.localdate(timezone.now(), dt.UTC)
        end = attrs.get("to") or today
        start = attrs.get("from") or end.replace(day=1)
        if start > end:
            raise serializers.ValidationError({"from": f"from ({start}) is after to ({end})"})
        if (end - start).days + 1 > USAGE_MAX_DAYS:
            raise serializers.ValidationError({"from": f"a period covers at most {USAGE_MAX_DAYS} days"})
        return {**attrs, "from": start, "to": end}


UsageQuery._declared_fields["from"] = serializers.DateField(
    required=False,
    input_formats=["iso-8601"],
    help_text="First day (UTC, YYYY-MM-DD); default the 1st of to's month",
)


class UsageFigures(serializers.Serializer):
    jobs = serializers.IntegerField(help_text="Jobs that ended (any outcome)")
    completed = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_creation_input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField(help_text="Claude's cost, as the jobs report it")
    audio_seconds = serializers.FloatField(help_text="Transcribed audio")
    provider_calls = serializers.IntegerField(help_text="Requests to the transcription provider")
    provider_cost_usd = serializers.FloatField(
        help_text="Transcription provider cost (price per audio minute)"
    )
    total_cost_usd = serializers.FloatField(help_text="cost_usd + provider_cost_usd: what budgets count")


class UsageGroup(UsageFigures):
    day = serializers.DateField(required=False)
    model = serializers.CharField(required=False)
    source = serializers.CharField(required=False)


class UsageBudget(serializers.Serializer):
    daily_usd = serializers.FloatField(allow_null=True)
    monthly_usd = serializers.FloatField(allow_null=True)
    spent_today_usd = serializers.FloatField()
    spent_month_usd = serializers.FloatField()


class UsageLimits(serializers.Serializer):
    max_active_jobs = serializers.IntegerField()
    max_running_jobs = serializers.IntegerField(help_text="0: no cap but the workers")
    active_jobs = serializers.IntegerField()
    running_jobs = serializers.IntegerField()


class UsageReport(serializers.Serializer):
    group_by = serializers.CharField()
    totals = UsageFigures()
    groups = UsageGroup(many=True)
    budget = UsageBudget()
    limits = UsageLimits()


UsageReport._declared_fields["from"] = serializers.DateField()
UsageReport._declared_fields["to"] = serializers.DateField()
UsageEnvelope = envelope("UsageReportEnvelope", UsageReport)


class UsageView(JobsAPIView):
    @extend_schema(
        operation_id="usage_get",
        summary="This key's usage and spend, per day, model or source",
        description=(
            "Totals of the jobs that ended between `from` and `to` (UTC days, both included; default "
            "this month), and one row per `group_by` value. `total_cost_usd` is what the key's budget "
            "counts. Also the key's budget and job limits with what it uses of them now."
        ),
        parameters=[UsageQuery],
        responses={
            200: UsageEnvelope,
            400: OpenApiResponse(ErrorEnvelope, description="A bad parameter; error.field names it"),
            401: OpenApiResponse(ErrorEnvelope, description="API key missing or invalid"),
        },
    )
    def get(self, request):
        unknown = sorted(set(request.query_params) - {"from", "to", "group_by"})
        if unknown:
            raise ServiceError(f"unknown parameter {unknown[0]}: use from, to, group_by", field=unknown[0])
        query = UsageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        caller = request.user
        api_key_id = caller.api_key.pk if caller.api_key else None
        user_id = None if caller.api_key else caller.user_id
        summary = usage_summary(
            api_key_id=api_key_id,
            user_id=user_id,
            start=params["from"],
            end=params["to"],
            group_by=params["group_by"],
        )
        spend = owner_spend(api_key_id=api_key_id, user_id=user_id)
        key = caller.api_key
        max_active, max_running = owner_limits(key)
        active = Job.objects.filter(caller.owns(), status__in=[JobStatus.PENDING, JobStatus.RUNNING])
        data = {
            "from": params["from"].isoformat(),
            "to": params["to"].isoformat(),
            "group_by": params["group_by"],
            **summary,
            "budget": {
                "daily_usd": float(key.budget_daily_usd)
                if key and key.budget_daily_usd is not None
                else None,
                "monthly_usd": float(key.budget_monthly_usd)
                if key and key.budget_monthly_usd is not None
                else None,
                "spent_today_usd": round(spend.today, 10),
                "spent_month_usd": round(spend.month, 10),
            },
            "limits": {
                "max_active_jobs": max_active,
                "max_running_jobs": max_running,
                "active_jobs": active.count(),
                "running_jobs": active.filter(status=JobStatus.RUNNING).count(),
            },
        }
        return ok(data)
