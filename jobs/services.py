"""Writes to the job core. Views, tasks, consumers and admin actions call these.

Status changes are compare-and-set updates along ``models.TRANSITIONS``: an
update that matches no row means someone else moved the job first, and the
caller acts on that instead of overwriting it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psutil
from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Count,
    DecimalField,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_q.tasks import async_task

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, LimitExceeded, ServiceError
from claudesvc.logcontext import current_request_id
from claudesvc.prometheus import job_metrics_retire
from jobs.kinds import job_kind
from jobs.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    TRANSITIONS,
    Artifact,
    Attachment,
    ClaudeSession,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    Worker,
)
from jobs.progress import JobProgress
from jobs.storage import job_files_delete
from jobs.usage import budget_check, budget_refusal, budget_remaining, usage_record_job_end
from jobs.workspace import workspace_remove

logger = logging.getLogger(__name__)

MODEL_ALIASES = ("haiku", "sonnet", "opus")
# Full model ids as Anthropic names them (claude-sonnet-4-20250514, claude-opus-4-1 …).
FULL_MODEL_PATTERN = r"^claude-[a-z0-9][a-z0-9.\-]{1,80}$"
_FULL_MODEL = re.compile(FULL_MODEL_PATTERN)


def resolve_model(model: str | None) -> str:
    """The model to run: an alias or a full Claude model id; anything else is an error."""
    if model is None or model == "":
        return settings.CLAUDE_DEFAULT_MODEL
    if not isinstance(model, str):
        raise ServiceError("model must be a string", field="model")
    name = model.strip().lower()
    if name in MODEL_ALIASES or _FULL_MODEL.match(name):
        return name
    raise ServiceError(
        f"model {model!r} is not supported: use one of {', '.join(MODEL_ALIASES)} or a full Claude model id",
        field="model",
    )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_enqueue() -> None:
    """Wake a worker up: one broker message saying that there is work.

    The jobs table is the queue; the message carries no job. If the broker
    cannot take it (Redis restarting), nothing is lost: every idle worker's
    sweep (``jobs.worker``) finds pending jobs within ``JOB_SWEEP_SECONDS``.
    """
    try:
        async_task("jobs.tasks.run_pending_jobs", group="jobs")
    except Exception:
        logger.warning(
            "could not send a wake-up to the broker; the workers' sweep will start the job", exc_info=True
        )


def job_create(
    *,
    caller: Caller,
    prompt: str,
    model: str | None = None,
    kind: str = JobKind.CLAUDE,
    source: str = "jobs",
    system_prompt: str = "",
    priority: int = 0,
    timeout_seconds: int | None = None,
    options: dict[str, Any] | None = None,
    session: ClaudeSession | None = None,
    enqueue: bool = True,
    check_limits: bool = True,
) -> Job:
    """Create a pending job. ``check_limits=False`` is for helper jobs of a job
    that already passed the checks (a transcription's summary)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ServiceError("prompt is required and must not be empty", field="prompt")
    if len(prompt) > settings.MAX_PROMPT_CHARS:
        raise ServiceError(f"prompt is longer than {settings.MAX_PROMPT_CHARS} characters", field="prompt")
    timeout = timeout_seconds or settings.JOB_TIMEOUT_SECONDS
    if timeout > settings.JOB_TIMEOUT_SECONDS:
        raise ServiceError(f"timeout may be at most {settings.JOB_TIMEOUT_SECONDS} seconds", field="timeout")
    model = resolve_model(model)
    with transaction.atomic():
        if check_limits:
            job_limits_check(caller=caller)
        job = Job.objects.create(
            **caller.owner_fields(),
            kind=kind,
            source=source,
            prompt=prompt,
            system_prompt=system_prompt,
            model=model,
            priority=priority,
            timeout_seconds=timeout,
            tool_policy=caller.tool_policy,
            options=options or {},
            session=session,
            request_id=current_request_id(),
        )
    logger.info("job %s created by %s (source=%s, model=%s)", job.id, caller.label, source, job.model)
    if enqueue:
        transaction.on_commit(job_enqueue)
    return job


def _claimable(worker: str | None = None):
    """Pending jobs that may start now: not a turn of a session that has one running
    (nor, live sessions, one whose live CLI another worker holds: ``jobs.live``)."""
    busy_sessions = Job.objects.filter(status=JobStatus.RUNNING, session__isnull=False).values("session_id")
    pending = Job.objects.filter(status=JobStatus.PENDING).exclude(session_id__in=busy_sessions)
    from jobs.live import claimable_filter  # live sessions hook

    return claimable_filter(pending, worker)


# -- per-owner limits (fair sharing) ------------------------------------------------------

# How long a caller refused for too many active jobs is told to wait: about
# how soon a short job ends and frees a place. A hint for clients that retry.
ACTIVE_LIMIT_RETRY_AFTER_SECONDS = 5


def _owner_of(*, api_key_id, user_id) -> Q:
    if api_key_id is not None:
        return Q(api_key_id=api_key_id)
    return Q(user_id=user_id, api_key__isnull=True)


def owner_limits(api_key) -> tuple[int, int]:
    """(max active, max running; 0 = no cap) of a key, or the defaults (JWT users)."""
    active = settings.JOB_MAX_ACTIVE_PER_KEY
    running = settings.JOB_MAX_RUNNING_PER_KEY
    if api_key is not None:
        if api_key.max_active_jobs is not None:
            active = api_key.max_active_jobs
        if api_key.max_running_jobs is not None:
            running = api_key.max_running_jobs
    return active, running


def _owner_lock(*, api_key_id, user_id) -> None:
    """Serialise the limit checks of one owner inside the current transaction.

    PostgreSQL: a row lock on the key (or user), so two requests cannot both
    see room for one more job. SQLite takes the database's write lock when the
    transaction begins (IMMEDIATE), which serialises them already, and has no
    row locks (Django leaves FOR UPDATE out there).
    """
    from django.contrib.auth import get_user_model

    from apikeys.models import ApiKey

    if api_key_id is not None:
        list(ApiKey.objects.select_for_update().filter(pk=api_key_id).values_list("pk", flat=True))
    elif user_id is not None:
        list(get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk", flat=True))


def job_limits_check(*, caller: Caller) -> None:
    """Refuse a new job of ``caller`` over its active-jobs limit (429) or its budget (402).

    Call it inside the transaction that creates the job (``job_create`` does).
    """
    api_key_id = caller.api_key.pk if caller.api_key else None
    user_id = None if caller.api_key else caller.user_id
    _owner_lock(api_key_id=api_key_id, user_id=user_id)
    max_active, _ = owner_limits(caller.api_key)
    active = Job.objects.filter(
        _owner_of(api_key_id=api_key_id, user_id=user_id), status__in=ACTIVE_STATUSES
    ).count()
    if active >= max_active:
        raise LimitExceeded(
            f"Too many active jobs: this key has {active} pending or running, its limit is {max_active} "
            "(active_jobs_limit); wait for one to finish",
            code="active_jobs_limit",
            headers={"Retry-After": str(ACTIVE_LIMIT_RETRY_AFTER_SECONDS)},
        )
    if caller.api_key is not None:
        budget_check(caller.api_key)


@dataclass(frozen=True)
class _OwnerQueue:
    """One owner with claimable work, as the fair claim sees it."""

    api_key_id: int | None
    user_id: int | None
    running: int
    top_priority: int
    oldest: Any
    max_running: int
    across_keys: bool
    has_budget: bool

    def order(self) -> tuple:
        # Fewest running first; a key's priority counts against other keys only
        # when the admin allowed it; then whoever has waited longest.
        return (self.running, -(self.top_priority if self.across_keys else 0), self.oldest)


def _owner_queues() -> list[_OwnerQueue]:
    """Every owner with a pending job, its running count and its next job's
    priority and age, in one query, fastest first.

    It walks the owners (keys, and users for JWT jobs) rather than the pending
    jobs: per owner an EXISTS, a count of its running jobs and the top of its
    queue, each an index probe on ``(owner, status, -priority, created_at)``.
    So it costs the same with fifty or fifty thousand jobs waiting. Whether
    the owner's next job is held back by its session is for ``_claim_from``.
    """
    from django.contrib.auth import get_user_model

    from apikeys.models import ApiKey

    def queue_of(owner_field: str, **extra):
        pending = Job.objects.filter(
            **{owner_field: OuterRef("pk")}, status=JobStatus.PENDING, **extra
        ).order_by("-priority", "created_at")
        running = (
            Job.objects.filter(**{owner_field: OuterRef("pk")}, status=JobStatus.RUNNING, **extra)
            .order_by()
            .values(owner_field)
            .annotate(n=Count("pk"))
            .values("n")
        )
        return {
            "running": Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
            "top": Subquery(pending.values("priority")[:1]),
            "head_at": Subquery(pending.values("created_at")[:1]),
        }, Exists(pending)

    key_fields, key_waiting = queue_of("api_key")
    keys = (
        ApiKey.objects.filter(key_waiting)
        .annotate(**key_fields, user_ref=Value(None, output_field=IntegerField()))
        .values_list(
            "pk",
            "user_ref",
            "running",
            "top",
            "head_at",
            "max_running_jobs",
            "priority_across_keys",
            "budget_daily_usd",
            "budget_monthly_usd",
        )
        .order_by()
    )
    user_fields, user_waiting = queue_of("user", api_key__isnull=True)
    users = (
        get_user_model()
        .objects.filter(user_waiting)
        .annotate(
            **user_fields,
            key_ref=Value(None, output_field=IntegerField()),
            cap=Value(None, output_field=IntegerField()),
            across=Value(False, output_field=BooleanField()),
            daily=Value(None, output_field=DecimalField(max_digits=12, decimal_places=4)),
            monthly=Value(None, output_field=DecimalField(max_digits=12, decimal_places=4)),
        )
        .values_list("key_ref", "pk", "running", "top", "head_at", "cap", "across", "daily", "monthly")
        .order_by()
    )
    queues = []
    for api_key_id, user_id, running, top, head_at, cap, across, daily, monthly in keys.union(
        users, all=True
    ):
        queues.append(
            _OwnerQueue(
                api_key_id=api_key_id,
                user_id=user_id,
                running=running,
                top_priority=top or 0,
                oldest=head_at,
                max_running=settings.JOB_MAX_RUNNING_PER_KEY if cap is None else cap,
                across_keys=bool(across),
                has_budget=daily is not None or monthly is not None,
            )
        )
    return sorted(queues, key=_OwnerQueue.order)


def job_claimable_exists() -> bool:
    """Whether a pending job could start now (the sweep wakes a worker if so): one
    whose session has no running turn, of an owner below its running cap."""
    for queue in _owner_queues():
        if queue.max_running and queue.running >= queue.max_running:
            continue
        if _claimable().filter(_owner_of(api_key_id=queue.api_key_id, user_id=queue.user_id)).exists():
            return True
    return False


def job_claim_next(*, worker: str | None = None, only_sessions: list | None = None) -> Job | None:
    """Move the next pending job to running, fairly between owners, or return None.

    The next job comes from the owner (API key, or JWT user) with the fewest
    running jobs, so one key's backlog delays another key's job by one job
    slot at most; among owners with as many running, a key the admin allowed
    to (``ApiKey.priority_across_keys``) goes first by its jobs' priority,
    then the owner who has waited longest. Within the owner, its highest
    priority, then its oldest job. An owner at its running cap
    (``max_running_jobs``) is skipped; one whose budget is spent has its
    pending jobs refused (cancelled, ``budget_exceeded``); a job that starts
    gets the key's remaining budget as its spending cap (``max_budget_usd``).

    The compare-and-set makes a job start at most once even when two workers
    (or a redelivered task) race; the running cap and budget are checked
    under the owner's lock in the same transaction as the claim.

    The turns of one session run one after the other: a session's job is not
    claimed while another of its jobs runs, and since every worker picks the
    first claimable job in the same order, racing workers pick the same
    (earliest) turn and only one of them gets it. The update repeats the
    condition, so a turn never starts beside a running one.

    ``only_sessions`` (live sessions, ``jobs.live``): claim only turns of these
    sessions (a worker's poller for the sessions whose live CLIs it holds).
    """
    worker = worker or worker_name()
    for _ in range(20):
        queues = [q for q in _owner_queues() if not q.max_running or q.running < q.max_running]
        if not queues:
            return None
        raced = False
        for queue in queues:
            job, lost_race = _claim_from(queue, worker, only_sessions)
            if job is not None:
                return job
            raced = raced or lost_race
        if not raced:
            return None
    return None


def _claim_from(queue: _OwnerQueue, worker: str, only_sessions=None) -> tuple[Job | None, bool]:
    """Claim the owner's next job; (the job or None, whether another worker interfered)."""
    owner = _owner_of(api_key_id=queue.api_key_id, user_id=queue.user_id)
    # Live sessions: only these sessions' turns (the running cap below still counts all of the owner's jobs).
    mine = owner & Q(session_id__in=only_sessions) if only_sessions is not None else owner
    candidate = (
        _claimable(worker)
        .filter(mine)
        .order_by("-priority", "created_at", "pk")
        .values_list("pk", flat=True)
        .first()
    )
    if candidate is None:
        # Taken meanwhile, or its next turn waits for its session: the next owner's turn.
        return None, False
    with transaction.atomic():
        if queue.max_running or queue.has_budget:
            _owner_lock(api_key_id=queue.api_key_id, user_id=queue.user_id)
        if queue.max_running:
            running = Job.objects.filter(owner, status=JobStatus.RUNNING).count()
            if running >= queue.max_running:
                return None, False
        cap = None
        if queue.has_budget:
            from apikeys.models import ApiKey

            key = ApiKey.objects.get(pk=queue.api_key_id)
            refusal = budget_refusal(key)
            if refusal is not None:
                _jobs_refuse_pending(owner=owner, message=refusal.message, code="budget_exceeded")
                return None, False
            cap = budget_remaining(key)
        now = timezone.now()
        claimed = (
            _claimable(worker)
            .filter(pk=candidate)
            .update(
                status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker, max_budget_usd=cap
            )
        )
    if not claimed:
        return None, True
    logger.info("job %s claimed by %s", candidate, worker)
    return Job.objects.get(pk=candidate), False


def _jobs_refuse_pending(*, owner: Q, message: str, code: str) -> int:
    """End an owner's pending jobs as cancelled with ``message`` (they would be refused anyway)."""
    refused = 0
    for job_id in Job.objects.filter(owner, status=JobStatus.PENDING).values_list("pk", flat=True):
        if job_transition(
            job_id=job_id, frm=JobStatus.PENDING, to=JobStatus.CANCELLED, error_message=message
        ):
            JobProgress(job_id, start_seq=_next_seq_of(job_id)).emit(
                "error", {"type": "error", "error": code, "message": message}
            )
            refused += 1
    if refused:
        logger.info("%d pending job(s) refused: %s", refused, message)
    return refused


def job_claim(*, job_id: uuid.UUID, worker: str | None = None) -> Job | None:
    """Move one given pending job to running (compare-and-set), or return None.

    For work that runs a job inline instead of through the queue, such as the
    Claude steps of a transcription job.
    """
    worker = worker or worker_name()
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker
    )
    if not claimed:
        return None
    logger.info("job %s claimed by %s", job_id, worker)
    return Job.objects.get(pk=job_id)


def job_transition(*, job_id: uuid.UUID, frm: JobStatus, to: JobStatus, **fields: Any) -> bool:
    """Compare-and-set ``frm`` -> ``to``; True if this call moved the job."""
    if to not in TRANSITIONS.get(frm, ()):
        raise ValueError(f"a job does not move from {frm} to {to}")
    if to not in FINAL_STATUSES:
        return bool(Job.objects.filter(pk=job_id, status=frm).update(status=to, **fields))
    fields.setdefault("finished_at", timezone.now())
    with transaction.atomic():
        moved = bool(Job.objects.filter(pk=job_id, status=frm).update(status=to, **fields))
        if moved:
            # With the final status, in its transaction: counted once, never lost.
            usage_record_job_end(job_id=job_id)
    return moved


def job_cancel(*, job: Job, reason: str = "Cancelled by the caller") -> Job:
    """Cancel a pending job at once; ask the worker to stop a running one."""
    if job.status in FINAL_STATUSES:
        raise Conflict(f"Job already {job.status}", code="already_finished")
    now = timezone.now()
    message = reason
    if job_transition(
        job_id=job.pk,
        frm=JobStatus.PENDING,
        to=JobStatus.CANCELLED,
        error_message=message,
        cancel_requested_at=now,
    ):
        JobProgress(job.pk, start_seq=_next_seq(job)).emit(
            "error", {"type": "error", "error": "cancelled", "message": message}
        )
    else:
        # Running (perhaps since a moment ago): its worker sees the flag and stops the CLI.
        Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested_at=now)
    job.refresh_from_db()
    return job


def owner_jobs_cancel(
    *, api_key_id: int | None = None, user_id: int | None = None, reason: str
) -> dict[str, int]:
    """Cancel every pending job of an owner and stop its running ones (revoked key,
    deactivated user). Returns how many were pending and running."""
    owner = _owner_of(api_key_id=api_key_id, user_id=user_id)
    counts = {"pending": 0, "running": 0}
    for job in Job.objects.filter(owner, status__in=ACTIVE_STATUSES).order_by("created_at"):
        was = job.status
        try:
            job = job_cancel(job=job, reason=reason)
        except Conflict:
            continue  # it ended meanwhile
        if job.status == JobStatus.CANCELLED or job.cancel_requested_at:
            counts["pending" if was == JobStatus.PENDING else "running"] += 1
    if any(counts.values()):
        logger.info(
            "owner key=%s user=%s: %d pending job(s) cancelled, %d running stopped (%s)",
            api_key_id,
            user_id,
            counts["pending"],
            counts["running"],
            reason,
        )
    return counts


def _next_seq(job: Job) -> int:
    return _next_seq_of(job.pk)


def _next_seq_of(job_id) -> int:
    last = JobEvent.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", flat=True).first()
    return 0 if last is None else last + 1


def job_delete(*, job: Job) -> None:
    """Delete a job and its files (stored attachments and artifacts, working
    directory). A running CLI is killed by its worker, which notices within a
    heartbeat that the row is gone."""
    job_id = job.pk
    cleanup = job_kind(job.kind).cleanup
    if cleanup is not None:
        cleanup(job_id)
    stored = [
        *Attachment.objects.filter(job_id=job_id).values_list("file", flat=True),
        *Artifact.objects.filter(job_id=job_id).values_list("file", flat=True),
    ]
    with transaction.atomic():
        job_metrics_retire(job_id=job_id)  # /metrics keeps counting it: counters never go down
        Job.objects.filter(pk=job_id).delete()
    job_files_delete(job_id, known=stored)
    workspace_remove(job_id)
    _scrub_database()
    logger.info("job %s deleted", job_id)


def _scrub_database() -> None:
    """SQLite: move the write-ahead log (which still holds the deleted rows'
    old pages) into the database, where secure_delete has zeroed them, and empty it.
    PostgreSQL keeps dead rows until (auto)vacuum reclaims them."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def jobs_delete_for_owner(*, api_key=None, user=None) -> int:
    """Delete everything an API key (or a Django user, for JWT callers) owns that has
    files, through the services that remove them: its sessions (their folders and
    transcripts), then its jobs (stored files, working folders, transcription child
    jobs). For deleting the key or user itself; returns the number of jobs deleted."""
    from jobs.sessions import session_delete

    if (api_key is None) == (user is None):
        raise ValueError("name exactly one owner: api_key or user")
    owner = {"api_key": api_key} if api_key is not None else {"user": user}
    for session in ClaudeSession.objects.filter(**owner):
        session_delete(session=session)
    deleted = 0
    # Children (a transcription's summaries) go with their parent; re-read after each delete.
    while job := Job.objects.filter(**owner).order_by("created_at").first():
        job_delete(job=job)
        deleted += 1
    return deleted


def job_delete_expired(*, batch: int = 200) -> int:
    """Delete finished jobs older than ``JOB_RETENTION_DAYS`` with their files; 0 keeps everything."""
    if not settings.JOB_RETENTION_DAYS:
        return 0
    cutoff = timezone.now() - timedelta(days=settings.JOB_RETENTION_DAYS)
    deleted = 0
    while True:
        expired = list(Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff)[:batch])
        for job in expired:
            job_delete(job=job)
        deleted += len(expired)
        if len(expired) < batch:
            break
    if deleted:
        logger.info("deleted %d job(s) finished more than %d days ago", deleted, settings.JOB_RETENTION_DAYS)
    return deleted


def job_requeue(*, job_id: uuid.UUID, reason: str) -> bool:
    """Hand a running job back to the queue (compare-and-set running -> pending).

    Only for a job stopped before its model answered anything (a graceful
    stop): nothing of it was seen, so it runs again from the start, in its
    place in the queue.
    """
    moved = job_transition(
        job_id=job_id,
        frm=JobStatus.RUNNING,
        to=JobStatus.PENDING,
        started_at=None,
        heartbeat_at=None,
        worker="",
        cli_pid=None,
    )
    if moved:
        logger.info("job %s handed back to the queue (%s)", job_id, reason)
    return moved


STALE_MESSAGE = "The worker running this job stopped responding; the job was abandoned."


def job_release_broken_off(*, job_id: uuid.UUID, error: BaseException, cli_started: bool) -> str | None:
    """Settle a job whose run broke off with an error in the worker (the database
    went away under it, most likely), instead of leaving it running until the
    reaper calls its worker dead. A job of which nothing ran (no CLI started, no
    event stored) and that met a database error goes back to the queue from a
    clean folder; any other is failed with the error (another error would only
    recur), which its readers get as its last event. What it did (``"requeued"``,
    ``"failed"``), or None if the job was no longer running."""
    from django.db import InterfaceError, OperationalError

    started = cli_started or Job.objects.filter(pk=job_id, cli_pid__isnull=False).exists()
    database_away = isinstance(error, (OperationalError, InterfaceError))
    if database_away and not started and not JobEvent.objects.filter(job_id=job_id).exists():
        if not job_requeue(job_id=job_id, reason=f"its run broke off before the CLI started: {error}"):
            return None
        workspace_remove(job_id)
        job_enqueue()
        return "requeued"
    if database_away:
        message = f"The job's worker lost its database connection while running it ({error}); it was stopped."
    else:
        message = f"The job's run broke off with an error in its worker ({type(error).__name__}: {error}); it was stopped."
    if not job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.FAILED, error_message=message):
        return None
    logger.warning("job %s failed: %s", job_id, message)
    _emit_reaped(job_id, message)
    return "failed"


def _process_started_before(pid: int, moment) -> bool:
    """Whether a process ``pid`` exists on this host and was started before ``moment``
    (a process started later only reuses the number)."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    return moment is None or created <= moment.timestamp() + 1


def _dead_local_workers(running: list[dict[str, Any]]) -> set[str]:
    """Workers on this host whose process is gone, among the running jobs' workers.

    A worker beats every JOB_HEARTBEAT_SECONDS; one that missed two beats and
    whose process no longer exists here died (SIGKILL, OOM): its jobs need not
    wait out JOB_STALE_SECONDS. (Two beats, so that a same-named host with
    another process namespace never loses a live job to this shortcut.)
    """
    host = socket.gethostname()
    quiet = timezone.now() - timedelta(seconds=2 * settings.JOB_HEARTBEAT_SECONDS + 1)
    dead = set()
    for job in running:
        name, _, pid = job["worker"].rpartition(":")
        if name != host or not pid.isdigit() or job["heartbeat_at"] is None or job["heartbeat_at"] > quiet:
            continue
        if not _process_started_before(int(pid), job["started_at"]):
            dead.add(job["worker"])
    return dead


def _kill_orphaned_cli(job: dict[str, Any]) -> None:
    """The CLI of a job whose worker died on this host, if it still runs (its group)."""
    pid = job.get("cli_pid")
    if not pid or not job["worker"].startswith(f"{socket.gethostname()}:"):
        return
    if not _process_started_before(pid, None):
        return
    try:
        created = psutil.Process(pid).create_time()
        if job["started_at"] is not None and created < job["started_at"].timestamp() - 1:
            return  # another process that got the number
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, OSError):
        return


def job_reap_stale() -> int:
    """Fail running jobs whose worker died.

    A job whose heartbeat is older than JOB_STALE_SECONDS lost its worker,
    wherever it ran; a job whose worker process on this host is gone is failed
    at once (see ``_dead_local_workers``). Its CLI, if it still runs here, is
    killed with its process group.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)
    running = list(
        Job.objects.filter(status=JobStatus.RUNNING).values(
            "pk", "worker", "heartbeat_at", "started_at", "cli_pid"
        )
    )
    dead_workers = _dead_local_workers(running)
    reaped = 0
    for job in running:
        if job["worker"] in dead_workers:
            message = f"The worker running this job ({job['worker']}) died; the job was abandoned."
        elif job["heartbeat_at"] is None or job["heartbeat_at"] < cutoff:
            message = STALE_MESSAGE
        else:
            continue
        if job_transition(
            job_id=job["pk"], frm=JobStatus.RUNNING, to=JobStatus.FAILED, error_message=message
        ):
            reaped += 1
            logger.warning("job %s reaped: %s", job["pk"], message)
            _kill_orphaned_cli(job)
            _emit_reaped(job["pk"], message)
    if reaped:
        # Turns that waited for a lost job's session can start now.
        job_enqueue()
    Worker.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(hours=1)).delete()
    return reaped


def _emit_reaped(job_id: uuid.UUID, message: str) -> None:
    """The error event a reader waits for (the job's worker can no longer write it)."""
    try:
        last = JobEvent.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", flat=True).first()
        JobProgress(job_id, start_seq=0 if last is None else last + 1).emit(
            "error", {"type": "error", "error": JobStatus.FAILED, "message": message}
        )
    except Exception:  # a reader still sees the final status
        logger.warning("job %s: could not record why it was reaped", job_id, exc_info=True)
