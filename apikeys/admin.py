"""Admin for API keys: the secret is shown once, right after creation.

Deleting a key deletes what it owns through the services that remove files
(``jobs_delete_for_owner``: its sessions' folders, its jobs' stored files and
working folders), never by a bare database cascade that would leave them on
disk. Revoking is usually what is wanted: it keeps the key's history.
"""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.utils import timezone

from apikeys.models import ApiKey, RateLimitOverride
from apikeys.services import api_key_active_jobs, api_key_create, api_key_revoke
from apikeys.spend_admin import KeySpendAdmin  # noqa: F401 (registers the "spend by key" page)
from jobs.owners import jobs_delete_for_owner


class RateLimitOverrideInline(admin.TabularInline):
    model = RateLimitOverride
    extra = 0
    verbose_name = "rate limit override"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    inlines = [RateLimitOverrideInline]
    list_display = ["name", "prefix", "tool_policy", "owner", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tool_policy", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    raw_id_fields = ["owner"]
    list_select_related = ["owner"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(name=obj.name, owner=obj.owner, tool_policy=obj.tool_policy)
        obj.pk = key.pk
        obj.refresh_from_db()
        messages.warning(request, f"The key's secret, shown this once and never again: {raw}")

    # -- deletes through the services ---------------------------------------------------

    def delete_model(self, request, obj):
        jobs_delete_for_owner(api_key=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for key in queryset:
            self.delete_model(request, key)

    @admin.action(description="Revoke selected keys (cancels their pending jobs, stops running ones)")
    def revoke(self, request, queryset):
        keys = list(queryset.filter(revoked_at__isnull=True))
        if request.POST.get("post") != "yes":
            # Say what will happen to the keys' jobs before doing it.
            rows = [{"key": key, **api_key_active_jobs(key=key)} for key in keys]
            return TemplateResponse(
                request,
                "admin/apikeys/apikey/revoke_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Revoke API keys?",
                    "opts": self.model._meta,
                    "rows": rows,
                    "total_pending": sum(r["pending"] for r in rows),
                    "total_running": sum(r["running"] for r in rows),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            )
        pending = running = 0
        for key in keys:
            stopped = api_key_revoke(key=key)
            pending += stopped["pending"]
            running += stopped["running"]
        self.message_user(
            request,
            f"Revoked {len(keys)} key(s) at {timezone.now():%Y-%m-%d %H:%M:%S} UTC; "
            f"{pending} pending job(s) cancelled, {running} running job(s) stopped.",
        )
        return None
