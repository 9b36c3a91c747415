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
from datetime import timedelta
from typing import Any

import psutil
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_q.tasks import async_task

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, ServiceError
from claudesvc.logcontext import current_request_id
from claudesvc.prometheus import job_metrics_retire
from jobs.kinds import job_kind
from jobs.models import (
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
) -> Job:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ServiceError("prompt is required and must not be empty", field="prompt")
    if len(prompt) > settings.MAX_PROMPT_CHARS:
        raise ServiceError(f"prompt is longer than {settings.MAX_PROMPT_CHARS} characters", field="prompt")
    timeout = timeout_seconds or settings.JOB_TIMEOUT_SECONDS
    if timeout > settings.JOB_TIMEOUT_SECONDS:
        raise ServiceError(f"timeout may be at most {settings.JOB_TIMEOUT_SECONDS} seconds", field="timeout")
    job = Job.objects.create(
        **caller.owner_fields(),
        kind=kind,
        source=source,
        prompt=prompt,
        system_prompt=system_prompt,
        model=resolve_model(model),
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


def _claimable():
    """Pending jobs that may start now: not a turn of a session that has one running."""
    busy_sessions = Job.objects.filter(status=JobStatus.RUNNING, session__isnull=False).values("session_id")
    return Job.objects.filter(status=JobStatus.PENDING).exclude(session_id__in=busy_sessions)


def _next_claimable_id() -> uuid.UUID | None:
    """Which pending job starts next: highest priority first, ties first-come.

    The queue's order lives here alone (the claim and the sweep's "is there
    work?" both ask this), so changing it is one edit.
    """
    return _claimable().order_by("-priority", "created_at", "pk").values_list("pk", flat=True).first()


def job_claimable_exists() -> bool:
    """Whether a pending job could start now (the sweep wakes a worker if so)."""
    return _next_claimable_id() is not None


def job_claim_next(*, worker: str | None = None) -> Job | None:
    """Move the best pending job to running, or return None if there is none.

    The compare-and-set makes a job start at most once even when two workers
    (or a redelivered wake-up) race.

    The turns of one session run one after the other: a session's job is not
    claimed while another of its jobs runs, and since every worker picks the
    first claimable job in the same order, racing workers pick the same
    (earliest) turn and only one of them gets it. The update repeats the
    condition, so a turn never starts beside a running one.
    """
    worker = worker or worker_name()
    for _ in range(20):
        candidate = _next_claimable_id()
        if candidate is None:
            return None
        now = timezone.now()
        claimed = (
            _claimable()
            .filter(pk=candidate)
            .update(status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker)
        )
        if claimed:
            logger.info("job %s claimed by %s", candidate, worker)
            return Job.objects.get(pk=candidate)
    return None


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
    if to in FINAL_STATUSES:
        fields.setdefault("finished_at", timezone.now())
    return bool(Job.objects.filter(pk=job_id, status=frm).update(status=to, **fields))


def job_cancel(*, job: Job) -> Job:
    """Cancel a pending job at once; ask the worker to stop a running one."""
    if job.status in FINAL_STATUSES:
        raise Conflict(f"Job already {job.status}", code="already_finished")
    now = timezone.now()
    message = "Cancelled by the caller"
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


def _next_seq(job: Job) -> int:
    last = job.events.order_by("-seq").values_list("seq", flat=True).first()
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
