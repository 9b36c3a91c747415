"""Admin for jobs: tuned for a big table; cancel calls the same service as the API."""

from django.contrib import admin

from claudesvc.errors import ServiceError
from jobs.models import Artifact, Attachment, Job, JobEvent
from jobs.services import job_cancel


class JobEventInline(admin.TabularInline):
    model = JobEvent
    fields = ["seq", "type", "data", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["seq"]
    max_num = 0

    def has_add_permission(self, request, obj=None):
        return False


class _FileInline(admin.TabularInline):
    fields = ["name", "content_type", "size", "sha256", "file", "created_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class AttachmentInline(_FileInline):
    model = Attachment


class ArtifactInline(_FileInline):
    model = Artifact


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "source",
        "status",
        "model",
        "api_key",
        "created_at",
        "duration_ms",
        "cost_usd",
    ]
    list_filter = ["status", "kind", "source", "model"]
    search_fields = ["id", "prompt"]
    list_select_related = ["api_key"]
    raw_id_fields = ["api_key", "user"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    inlines = [AttachmentInline, ArtifactInline, JobEventInline]
    actions = ["cancel"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request, queryset):
        done = 0
        for job in queryset:
            try:
                job_cancel(job=job)
                done += 1
            except ServiceError:
                continue
        self.message_user(request, f"Asked {done} job(s) to stop.")
