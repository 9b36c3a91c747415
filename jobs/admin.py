"""Admin for jobs, tuned for a big table, acting only through the services.

- Deleting a job (its page, or "delete selected") goes through ``job_delete``,
  so its stored files, working folder and transcription child jobs go too.
- Cancelling calls ``job_cancel``, as the API does.
- The list shows what an operator looks for first: status, error, duration,
  cost, key; times to the second, in UTC.
- A job's page shows its usage and events readably, and while the job is
  pending or running it asks ``live/`` every two seconds for the status and
  the events written since (``jobs/static/jobs/admin_job_live.js``).
- Deleting a Django user (whose JWT jobs and sessions would cascade) also
  goes through the services first (``OwnerCleaningUserAdmin``).
- File links go to ``files/<attachment|artifact>/<name>``, which streams the
  file like the Jobs API download does, for staff only.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.template.defaultfilters import truncatechars
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from claudesvc.errors import ServiceError
from jobs.jobs_api.downloads import artifact_response
from jobs.models import ACTIVE_STATUSES, Artifact, Attachment, ClaudeSession, Job, JobEvent
from jobs.owners import jobs_delete_for_owner
from jobs.services import job_cancel, job_delete
from jobs.sessions import session_delete

EMPTY = "-"
# The page shows at most this many events; the API has them all (GET /jobs/{id}/stream).
EVENTS_SHOWN = 300


def full_time(value: datetime | None) -> str:
    """A timestamp to the millisecond, in UTC (the service's time zone), or EMPTY."""
    if value is None:
        return EMPTY
    return localtime(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def event_summary(event: JobEvent) -> str:
    """One line that says what an event is, without opening its JSON."""
    data = event.data if isinstance(event.data, dict) else {}
    if event.type == "assistant":
        parts = []
        for block in (data.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                parts.append(f"[tool {block.get('name')}]")
        return truncatechars(" ".join(parts), 200)
    if event.type == "result":
        return truncatechars(f"{data.get('subtype', '')}: {data.get('result', '')}", 200)
    if event.type in ("progress", "error"):
        return truncatechars(data.get("message") or data.get("error") or "", 200)
    if event.type == "system":
        return f"{data.get('subtype', '')} {data.get('model', '')}".strip()
    return truncatechars(data.get("type", ""), 200)


def event_row(event: JobEvent) -> str:
    return format_html(
        '<tr class="job-event" data-seq="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}'
        "<details><summary>JSON</summary><pre>{}</pre></details></td></tr>",
        event.seq,
        event.seq,
        event.type,
        full_time(event.created_at),
        event_summary(event),
        pretty_json(event.data),
    )


class _FileInline(admin.TabularInline):
    fields = ["download", "content_type", "size", "sha256", "created_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    kind = ""

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="file")
    def download(self, obj):
        url = reverse("admin:jobs_job_file", args=[obj.job_id, self.kind, obj.name])
        return format_html('<a href="{}">{}</a>', url, obj.name)


class AttachmentInline(_FileInline):
    model = Attachment
    kind = "attachment"


class ArtifactInline(_FileInline):
    model = Artifact
    kind = "artifact"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "status",
        "kind",
        "source",
        "model",
        "api_key",
        "created",
        "duration",
        "cost",
        "error",
    ]
    list_filter = ["status", "kind", "source", "model", "api_key"]
    search_fields = ["=id", "=request_id", "error_message", "prompt"]
    list_select_related = ["api_key"]
    raw_id_fields = ["api_key", "user", "session"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    inlines = [AttachmentInline, ArtifactInline]
    actions = ["cancel", "delete_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "live_status",
                    "kind",
                    "source",
                    "model",
                    "api_key",
                    "user",
                    "session",
                    "request_id",
                    "priority",
                    "tool_policy",
                    "timeout_seconds",
                ]
            },
        ),
        ("Request", {"fields": ["prompt", "system_prompt", "options_pretty"]}),
        (
            "Outcome",
            {"fields": ["result", "error_message", "exit_code", "stderr", "usage_table", "num_turns"]},
        ),
        (
            "Times (UTC)",
            {"fields": ["created", "started", "finished", "duration", "heartbeat", "cancel_requested"]},
        ),
        ("Process", {"fields": ["worker", "cli_pid", "claude_session_id", "peak_memory", "cpu_time_ms"]}),
        ("Events", {"fields": ["events_table"]}),
    ]

    class Media:
        js = ["jobs/admin_job_live.js"]

    def get_readonly_fields(self, request, obj=None):
        return [field for fieldset in self.fieldsets for field in fieldset[1]["fields"]]

    def has_add_permission(self, request):
        return False

    # -- list columns ------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short_id(self, obj):
        return str(obj.pk)[:8]

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, obj):
        return full_time(obj.created_at)

    @admin.display(description="started (UTC)", ordering="started_at")
    def started(self, obj):
        return full_time(obj.started_at)

    @admin.display(description="finished (UTC)", ordering="finished_at")
    def finished(self, obj):
        return full_time(obj.finished_at)

    @admin.display(description="last heartbeat (UTC)")
    def heartbeat(self, obj):
        return full_time(obj.heartbeat_at)

    @admin.display(description="cancel requested (UTC)")
    def cancel_requested(self, obj):
        return full_time(obj.cancel_requested_at)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return EMPTY if obj.duration_ms is None else f"{obj.duration_ms / 1000:.1f} s"

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj):
        return EMPTY if obj.cost_usd is None else f"{obj.cost_usd:.4f}"

    @admin.display(description="error")
    def error(self, obj):
        return truncatechars(obj.error_message, 80)

    # -- the change page -----------------------------------------------------------

    @admin.display(description="status")
    def live_status(self, obj):
        if obj.status not in ACTIVE_STATUSES:
            return obj.status
        # The script refreshes this and appends new events while the job is active.
        return format_html(
            '<span id="job-live" data-url="{}">{}</span> <small id="job-live-note">(refreshing)</small>',
            reverse("admin:jobs_job_live", args=[obj.pk]),
            obj.status,
        )

    @admin.display(description="options")
    def options_pretty(self, obj):
        return format_html("<pre>{}</pre>", pretty_json(obj.options))

    @admin.display(description="peak memory")
    def peak_memory(self, obj):
        return EMPTY if obj.peak_memory_bytes is None else f"{obj.peak_memory_bytes / 2**20:.1f} MiB"

    @admin.display(description="usage")
    def usage_table(self, obj):
        usage = obj.usage if isinstance(obj.usage, dict) else {}
        if not usage and obj.cost_usd is None:
            return EMPTY
        rows = [(name, value) for name, value in sorted(usage.items()) if isinstance(value, int | float)]
        rows.append(("cost_usd", EMPTY if obj.cost_usd is None else f"{obj.cost_usd:.6f}"))
        others = {name: value for name, value in usage.items() if not isinstance(value, int | float)}
        table = format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )
        if others:
            table += format_html("<pre>{}</pre>", pretty_json(others))
        return table

    @admin.display(description="events")
    def events_table(self, obj):
        events = list(obj.events.order_by("seq")[:EVENTS_SHOWN])
        total = obj.events.count() if len(events) == EVENTS_SHOWN else len(events)
        note = (
            format_html(
                "<p>The first {} of {} events; all of them: GET /jobs/{}/stream.</p>",
                EVENTS_SHOWN,
                total,
                obj.pk,
            )
            if total > len(events)
            else ""
        )
        return format_html(
            '{}<table id="job-events"><thead><tr><th>#</th><th>type</th><th>written (UTC)</th>'
            "<th>content</th></tr></thead><tbody>{}</tbody></table>",
            note,
            format_html_join("", "{}", ((event_row(e),) for e in events)),
        )

    # -- extra views: live refresh and file downloads ------------------------------------

    def get_urls(self):
        extra = [
            path("<uuid:job_id>/live/", self.admin_site.admin_view(self.live_view), name="jobs_job_live"),
            path(
                "<uuid:job_id>/files/<str:kind>/<path:name>",
                self.admin_site.admin_view(self.file_view),
                name="jobs_job_file",
            ),
        ]
        return extra + super().get_urls()

    def _job_for(self, request, job_id) -> Job:
        job = Job.objects.filter(pk=job_id).first()
        if job is None:
            raise Http404("No such job")
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return job

    def live_view(self, request, job_id):
        """The status and the events after ``?after=<seq>`` (rendered rows), for the page's script."""
        job = self._job_for(request, job_id)
        try:
            after = int(request.GET.get("after", "-1"))
        except ValueError:
            after = -1
        events = list(job.events.filter(seq__gt=after).order_by("seq")[:EVENTS_SHOWN])
        return JsonResponse(
            {
                "status": job.status,
                "active": job.status in ACTIVE_STATUSES,
                "duration": self.duration(job),
                "events": [event_row(e) for e in events],
            }
        )

    def file_view(self, request, job_id, kind, name):
        """One of the job's attachments or artifacts, streamed as the Jobs API download streams it."""
        job = self._job_for(request, job_id)
        model = {"attachment": Attachment, "artifact": Artifact}.get(kind)
        stored = model.objects.filter(job=job, name=name).first() if model else None
        if stored is None:
            raise Http404("The job has no such file")
        return artifact_response(request, stored)

    # -- writes through the services ---------------------------------------------------------

    def delete_model(self, request, obj):
        job_delete(job=obj)

    def delete_queryset(self, request, queryset):
        for job in queryset:
            job_delete(job=job)

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


@admin.register(ClaudeSession)
class ClaudeSessionAdmin(admin.ModelAdmin):
    list_display = ["external_id", "api_key", "user", "model", "created_at", "last_activity"]
    search_fields = ["external_id", "claude_session_id"]
    list_select_related = ["api_key", "user"]
    raw_id_fields = ["api_key", "user"]
    show_full_result_count = False
    readonly_fields = [f.name for f in ClaudeSession._meta.fields]
    actions = ["end_sessions"]

    def has_add_permission(self, request):
        return False

    def delete_model(self, request, obj):
        session_delete(session=obj)

    def delete_queryset(self, request, queryset):
        for session in queryset:
            session_delete(session=session)

    @admin.action(description="End selected sessions (stop their turns, remove their files)")
    def end_sessions(self, request, queryset):
        count = 0
        for session in queryset:
            session_delete(session=session)
            count += 1
        self.message_user(request, f"Ended {count} session(s).")


class OwnerCleaningUserAdmin(UserAdmin):
    """Django's user admin, except that deleting a user first deletes the jobs and
    sessions they own as a JWT caller through the services, so no file stays behind."""

    def delete_model(self, request, obj):
        jobs_delete_for_owner(user=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            self.delete_model(request, user)


_User = get_user_model()
if admin.site.is_registered(_User) and type(admin.site.get_model_admin(_User)) is UserAdmin:
    admin.site.unregister(_User)
    admin.site.register(_User, OwnerCleaningUserAdmin)
