"""Admin for API keys: the secret is shown once, right after creation."""

from django.contrib import admin, messages
from django.utils import timezone

from apikeys.models import ApiKey, RateLimitOverride
from apikeys.services import api_key_create, api_key_revoke


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

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s) at {timezone.now():%Y-%m-%d %H:%M:%S} UTC.")
