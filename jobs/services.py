"""Writes to the job core: a job's lifecycle. Views, tasks, consumers and admin actions call these.

Create (with the owner's limits), transition, cancel, requeue, delete. The
claim (which pending job starts next) is ``jobs.queue``; settling jobs whose
run broke off or whose worker died is ``jobs.reaper``.

Status changes are compare-and-set updates along ``models.TRANSITIONS``: an
update that matches no row means someone else moved the job first, and the
caller acts on that instead of overwriting it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Q,
)
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
)
from jobs.options import options_validate
from jobs.outcomes import CANCELLED_MESSAGE, error_event
from jobs.progress import JobProgress
from jobs.storage import job_files_delete
from jobs.usage import budget_check, usage_record_job_end
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
    parent: Job | None = None,
    tool_policy: str | None = None,
    enqueue: bool = True,
    check_limits: bool = True,
) -> Job:
    """Create a pending job. ``check_limits=False`` is for child jobs of a job
    that already passed the checks (a transcription's summary); ``tool_policy``
    narrows the caller's (a child's is its parent's choice); ``options`` are
    checked against the kind's options type (``jobs.options``)."""
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
            tool_policy=tool_policy or caller.tool_policy,
            options=options_validate(kind, options or {}),
            session=session,
            parent=parent,
            request_id=current_request_id(),
        )
    logger.info("job %s created by %s (source=%s, model=%s)", job.id, caller.label, source, job.model)
    if enqueue:
        transaction.on_commit(job_enqueue)
    return job


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


def job_transition(
    *, job_id: uuid.UUID, frm: JobStatus, to: JobStatus, then: Callable[[], None] | None = None, **fields: Any
) -> bool:
    """Compare-and-set ``frm`` -> ``to``; True if this call moved the job.

    ``then`` (a final status only) runs in the same transaction once the job moved,
    so that whoever sees the final status sees what it writes too (a session turn's
    record, ``sessions.session_job_finished``). If it fails, the job's move stands
    and the error is logged: its caller's fallback does it again."""
    if to not in TRANSITIONS.get(frm, ()):
        raise ValueError(f"a job does not move from {frm} to {to}")
    if then is not None and to not in FINAL_STATUSES:
        raise ValueError(f"then= goes with a final status, not {to}")
    if to not in FINAL_STATUSES:
        return bool(Job.objects.filter(pk=job_id, status=frm).update(status=to, **fields))
    fields.setdefault("finished_at", timezone.now())
    with transaction.atomic():
        moved = bool(Job.objects.filter(pk=job_id, status=frm).update(status=to, **fields))
        if moved:
            # With the final status, in its transaction: counted once, never lost.
            usage_record_job_end(job_id=job_id)
            if then is not None:
                try:
                    with transaction.atomic():
                        then()
                except Exception:
                    logger.exception("job %s: what goes with its final status failed", job_id)
    return moved


def job_cancel(*, job: Job, reason: str = CANCELLED_MESSAGE) -> Job:
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
        JobProgress(job.pk, start_seq=_next_seq(job)).emit("error", dict(error_event("cancelled", message)))
    else:
        # Running (perhaps since a moment ago): its worker sees the flag and stops the CLI.
        Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested_at=now)
    # Its child jobs (a transcription's summary) stop with it.
    for child in Job.objects.filter(parent_id=job.pk, status__in=ACTIVE_STATUSES):
        try:
            job_cancel(job=child, reason=reason)
        except Conflict:
            continue  # it ended meanwhile
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
    # Its child jobs first, through this same path: their files go too (the
    # foreign key's cascade would remove only their rows).
    for child in Job.objects.filter(parent_id=job_id):
        job_delete(job=child)
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
