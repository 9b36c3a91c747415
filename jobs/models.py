"""The job core: one ``Job`` row behind every API family, and its ordered events."""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.db import models

from apikeys.models import ToolPolicy


class JobStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED)
# The only moves a job makes; services change status by compare-and-set along these.
# running -> pending: a graceful stop hands back a job whose model had not answered yet.
TRANSITIONS = {
    JobStatus.PENDING: {JobStatus.RUNNING, JobStatus.CANCELLED},
    JobStatus.RUNNING: {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.TIMEOUT,
        JobStatus.CANCELLED,
        JobStatus.PENDING,
    },
}


class JobKind(models.TextChoices):
    CLAUDE = "claude"
    TRANSCRIPTION = "transcription"


class JobSource(models.TextChoices):
    """Which API family (or parent job) created a job."""

    JOBS = "jobs"  # the Jobs API (also transcription jobs themselves)
    COMPAT = "compat"  # the OpenAI/Anthropic-compatible endpoints
    PROCESS = "process"  # the Process API
    TRANSCRIPTION = "transcription"  # a transcription's summary: a child job, hidden from the job list


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(
        "apikeys.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    kind = models.CharField(max_length=20, choices=JobKind.choices, default=JobKind.CLAUDE)
    source = models.CharField(max_length=20, choices=JobSource.choices, default=JobSource.JOBS)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.PENDING)

    prompt = models.TextField()
    system_prompt = models.TextField(blank=True)
    model = models.CharField(max_length=100)
    priority = models.PositiveSmallIntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField()
    tool_policy = models.CharField(max_length=20, choices=ToolPolicy.choices)
    # Family-specific request options (max tokens, partial messages, session …): plain JSON.
    options = models.JSONField(default=dict, blank=True)
    # The job this one is a step of (a transcription's summary): deleting or
    # cancelling the parent reaches it (services.job_delete / job_cancel).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    # A conversation this job is a turn of: its jobs run one at a time, in order.
    session = models.ForeignKey(
        "ClaudeSession", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )

    result = models.TextField(blank=True)
    error_message = models.TextField(blank=True)
    usage = models.JSONField(null=True, blank=True)
    cost_usd = models.FloatField(null=True, blank=True)
    num_turns = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stderr = models.TextField(blank=True)
    claude_session_id = models.CharField(max_length=64, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_time_ms = models.PositiveIntegerField(null=True, blank=True)
    # HTTP status of the model's API when the job failed on it (429, 529, 400 …; see jobs/upstream.py).
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The key's remaining budget when the job was claimed: the CLI's --max-budget-usd (jobs.usage).
    max_budget_usd = models.FloatField(null=True, blank=True)

    # X-Request-ID of the request that submitted the job: the worker logs the job's run under it.
    request_id = models.CharField(max_length=128, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    cli_pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The queue: highest priority first, then first come.
            models.Index(fields=["status", "-priority", "created_at"], name="job_queue_idx"),
            models.Index(fields=["api_key", "-created_at"], name="job_key_recent_idx"),
            models.Index(fields=["status", "finished_at"], name="job_status_finished_idx"),
            # A session's turns: is one running, which ran last.
            models.Index(fields=["session", "status"], name="job_session_status_idx"),
            # Fair claim: one owner's next job (queue.job_claim_next), its active count.
            models.Index(fields=["api_key", "status", "-priority", "created_at"], name="job_key_queue_idx"),
            models.Index(fields=["user", "status", "-priority", "created_at"], name="job_user_queue_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class JobEvent(models.Model):
    """One message of a job, in order. ``seq`` counts from 0 per job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=40)
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_unique_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.type}"


class RetiredJobMetric(models.Model):
    """What deleted jobs had added to one Prometheus counter or histogram series.

    ``/metrics`` counts jobs from this table's rows plus these, so retention and
    deletes never make a counter go down (Prometheus would read that as a reset).
    ``labels`` is the series' sorted label pairs as JSON.
    """

    series = models.CharField(max_length=100)
    labels = models.CharField(max_length=500)
    value = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "labels"], name="retiredjobmetric_unique_series")
        ]

    def __str__(self) -> str:
        return f"{self.series}{self.labels} {self.value}"


def _storage_name(name: str) -> str:
    """A storage-safe version of a file name; the row keeps the real name."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")[:80] or "file"
    ext = re.sub(r"[^\w]+", "", ext)[:16]
    return f"{stem}.{ext}" if ext else stem


def attachment_upload_to(instance: Attachment, filename: str) -> str:
    return f"jobs/{instance.job_id}/attachments/{_storage_name(filename)}"


def artifact_upload_to(instance: Artifact, filename: str) -> str:
    return f"jobs/{instance.job_id}/artifacts/{_storage_name(filename)}"


class JobFile(models.Model):
    """A stored file of a job: what the rows of attachments and artifacts share."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="%(class)ss")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.job_id}/{self.name}"


class Attachment(JobFile):
    """A file the caller sent with the job; copied into the job's working directory before the CLI starts."""

    file = models.FileField(upload_to=attachment_upload_to, max_length=500)

    class Meta:
        ordering = ["job", "id"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="attachment_unique_name")]


class Artifact(JobFile):
    """A file the job wrote into its output folder, downloadable by the job's owner.

    ``name`` is its path relative to the output folder, "/" between folders
    ("report.pdf", "charts/a.png").
    """

    file = models.FileField(upload_to=artifact_upload_to, max_length=500)

    class Meta:
        ordering = ["job", "name"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="artifact_unique_name")]


class ClaudeSession(models.Model):
    """A conversation of the compat API, owned by one caller.

    ``external_id`` is what the caller names it by (``X-Request-ID``,
    ``metadata.user_id`` or one made up); it is unique per owner only, so two
    callers who pick the same id never share a conversation. Its conversation
    is kept in the database (``TranscriptEntry``), so any worker host can run
    its next turn; each host runs the turns in a folder of its own named after
    the session (``sessions.session_workdir``; ``cwd`` is that folder on the
    host that made the session).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(
        "apikeys.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="claude_sessions"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="claude_sessions",
    )
    external_id = models.CharField(max_length=128)
    # The Claude Code conversation the last completed turn left (for display;
    # the worker resumes from the session's latest completed job).
    claude_session_id = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=100)
    cwd = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    last_activity = models.DateTimeField(db_index=True)
    # -- live sessions (jobs/live.py, issue 18) --
    # The worker process ("host:pid") whose live CLI holds this conversation, and
    # until when at most: other workers leave its next turn to that one meanwhile.
    live_worker = models.CharField(max_length=200, blank=True, default="", db_index=True)
    live_until = models.DateTimeField(null=True, blank=True)
    # Fingerprints of the client-visible history the last completed turn left
    # (jobs/compat_api/fingerprint.py): a turn built on another history starts afresh.
    history_fps = models.JSONField(default=list, blank=True)
    # -- end live sessions --

    class Meta:
        ordering = ["-last_activity"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "external_id"],
                condition=models.Q(api_key__isnull=False),
                name="claudesession_unique_per_key",
            ),
            models.UniqueConstraint(
                fields=["user", "external_id"],
                condition=models.Q(api_key__isnull=True),
                name="claudesession_unique_per_user",
            ),
        ]

    def __str__(self) -> str:
        return f"session {self.external_id}"


class TranscriptEntry(models.Model):
    """One line of a Claude Code transcript, mirrored by ``jobs.session_store``.

    The CLI writes its conversation to a local JSONL file; claude-agent-sdk's
    ``SessionStore`` hands every line to the database as well, and a resume
    rebuilds the file from here on whichever host runs the next turn. A line is
    owned by the compat session it belongs to, or by the job that wrote it when
    the job has no session, and goes when its owner is deleted.
    """

    id = models.BigAutoField(primary_key=True)  # the order lines were appended in
    session = models.ForeignKey(
        ClaudeSession, null=True, blank=True, on_delete=models.CASCADE, related_name="transcript_entries"
    )
    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.CASCADE, related_name="transcript_entries"
    )
    # The turn that wrote it: a session's resume skips lines of turns that did
    # not complete, so a killed or failed turn leaves no half of itself behind.
    writer = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    project_key = models.CharField(max_length=255)
    session_key = models.CharField(max_length=128)  # the SDK's session_id (the CLI's conversation)
    subpath = models.CharField(max_length=255, blank=True)  # "" is the main transcript
    # The line's own uuid, its idempotency key; lines without one ("") are never deduplicated.
    uuid = models.CharField(max_length=64, blank=True)
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["session", "project_key", "session_key", "subpath", "id"],
                name="transcript_session_idx",
            ),
            models.Index(
                fields=["job", "project_key", "session_key", "subpath", "id"], name="transcript_job_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(session__isnull=False, job__isnull=True)
                | models.Q(session__isnull=True, job__isnull=False),
                name="transcriptentry_one_owner",
            ),
            models.UniqueConstraint(
                fields=["session", "project_key", "session_key", "subpath", "uuid"],
                condition=models.Q(session__isnull=False) & ~models.Q(uuid=""),
                name="transcriptentry_unique_in_session",
            ),
            models.UniqueConstraint(
                fields=["job", "project_key", "session_key", "subpath", "uuid"],
                condition=models.Q(job__isnull=False) & ~models.Q(uuid=""),
                name="transcriptentry_unique_in_job",
            ),
        ]

    def __str__(self) -> str:
        return f"transcript line {self.session_key}/{self.subpath or '-'} #{self.id}"


class Worker(models.Model):
    """A django-q2 worker process, one row each, kept fresh by its heartbeat
    (``jobs.worker``). ``/health`` reads these; a row whose heartbeat stopped
    belongs to a process that is gone."""

    # "host:pid", as in Job.worker.
    name = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=200)
    pid = models.IntegerField()
    cluster = models.CharField(max_length=100)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)
    # The job it is running, if any.
    job_id = models.UUIDField(null=True, blank=True)
    # It got SIGTERM/SIGINT and is finishing its job within SHUTDOWN_GRACE_SECONDS.
    stopping = models.BooleanField(default=False)

    class Meta:
        ordering = ["host", "pid"]

    def __str__(self) -> str:
        return f"worker {self.name}"


class UsageDaily(models.Model):
    """What one owner (API key, or JWT user) spent on one UTC day, per model and source.

    Rows are added to in the transaction that gives a job its final status
    (``jobs.usage.usage_record_job_end``), so reading totals never scans the
    jobs table: a month of one key is at most a few hundred rows however many
    jobs it ran. ``cost_usd`` and the token counts are the jobs' own figures;
    ``provider_cost_usd`` is what the transcription provider costs
    (``TRANSCRIPTION_PRICE_PER_MINUTE_USD`` per minute of audio).
    """

    api_key = models.ForeignKey(
        "apikeys.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="usage_days"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="usage_days"
    )
    day = models.DateField()
    model = models.CharField(max_length=100)
    source = models.CharField(max_length=20)
    jobs = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_creation_input_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cost_usd = models.FloatField(default=0)
    audio_seconds = models.FloatField(default=0)
    provider_calls = models.PositiveIntegerField(default=0)
    provider_cost_usd = models.FloatField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "day", "model", "source"],
                condition=models.Q(api_key__isnull=False),
                name="usagedaily_unique_per_key",
            ),
            models.UniqueConstraint(
                fields=["user", "day", "model", "source"],
                condition=models.Q(api_key__isnull=True),
                name="usagedaily_unique_per_user",
            ),
        ]
        indexes = [models.Index(fields=["day"], name="usagedaily_day_idx")]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"

    def __str__(self) -> str:
        return f"{self.day} {self.model} {self.source}: {self.jobs} job(s), ${self.cost_usd + self.provider_cost_usd:.4f}"
