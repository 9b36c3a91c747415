"""Writes to the job core. Views, tasks, consumers and admin actions call these.

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
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, ServiceError
from jobs.models import (
    FINAL_STATUSES,
    TRANSITIONS,
    Artifact,
    Attachment,
    ClaudeSession,
    Job,
    JobKind,
    JobStatus,
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
    """Hand the broker one token to run the next pending job (see tasks.run_next_job)."""
    async_task("jobs.tasks.run_next_job", group="jobs")


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
    )
    logger.info("job %s created by %s (source=%s, model=%s)", job.id, caller.label, source, job.model)
    if enqueue:
        transaction.on_commit(job_enqueue)
    return job


def _claimable():
    """Pending jobs that may start now: not a turn of a session that has one running."""
    busy_sessions = Job.objects.filter(status=JobStatus.RUNNING, session__isnull=False).values("session_id")
    return Job.objects.filter(status=JobStatus.PENDING).exclude(session_id__in=busy_sessions)


def job_claim_next(*, worker: str | None = None) -> Job | None:
    """Move the best pending job to running, or return None if there is none.

    Highest priority first, ties first-come. The compare-and-set makes a job
    start at most once even when two workers (or a redelivered task) race.

    The turns of one session run one after the other: a session's job is not
    claimed while another of its jobs runs, and since every worker picks the
    first claimable job in the same order, racing workers pick the same
    (earliest) turn and only one of them gets it. The update repeats the
    condition, so a turn never starts beside a running one.
    """
    worker = worker or worker_name()
    for _ in range(20):
        candidate = (
            _claimable().order_by("-priority", "created_at", "pk").values_list("pk", flat=True).first()
        )
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
    if job.kind == JobKind.TRANSCRIPTION:
        from transcription.services import transcription_discard

        transcription_discard(job_id=job_id)
    stored = [
        *Attachment.objects.filter(job_id=job_id).values_list("file", flat=True),
        *Artifact.objects.filter(job_id=job_id).values_list("file", flat=True),
    ]
    Job.objects.filter(pk=job_id).delete()
    job_files_delete(job_id, known=stored)
    workspace_remove(job_id)
    logger.info("job %s deleted", job_id)


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


def job_reap_stale() -> int:
    """Fail running jobs whose worker stopped proving it is alive (it died)."""
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)
    stale = list(
        Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff).values_list("pk", flat=True)
    )
    reaped = 0
    for job_id in stale:
        if job_transition(
            job_id=job_id,
            frm=JobStatus.RUNNING,
            to=JobStatus.FAILED,
            error_message="The worker running this job stopped responding; the job was abandoned.",
        ):
            reaped += 1
            logger.warning("job %s reaped: worker lost", job_id)
    return reaped
