"""Jobs whose run broke off or whose worker died: settled, not left running.

``job_release_broken_off`` for a run that raised in its worker,
``job_reap_stale`` (the workers' sweep and the minutely schedule) for jobs
whose worker stopped beating or died on this host. Moved here from
``jobs.services``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from datetime import timedelta
from typing import Any

import psutil
from django.conf import settings
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobEvent, JobStatus, Worker
from jobs.outcomes import STALE_MESSAGE, error_event
from jobs.progress import JobProgress
from jobs.services import job_requeue, job_transition
from jobs.sessions import session_prune_unfinished
from jobs.workspace import workspace_remove

logger = logging.getLogger(__name__)


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
    # A child job is never requeued: the queue does not run it, its parent does (tasks.run_child_job).
    child = Job.objects.filter(pk=job_id, parent__isnull=False).exists()
    if database_away and not started and not child and not JobEvent.objects.filter(job_id=job_id).exists():
        if not job_requeue(job_id=job_id, reason=f"its run broke off before the CLI started: {error}"):
            return None
        workspace_remove(job_id)
        services.job_enqueue()
        return "requeued"
    if database_away:
        message = f"The job's worker lost its database connection while running it ({error}); it was stopped."
    else:
        message = f"The job's run broke off with an error in its worker ({type(error).__name__}: {error}); it was stopped."
    if not job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.FAILED, error_message=message):
        return None
    logger.warning("job %s failed: %s", job_id, message)
    _emit_reaped(job_id, message)
    session_id = Job.objects.filter(pk=job_id).values_list("session_id", flat=True).first()
    if session_id is not None:
        # Its worker's session_job_finished ran while the turn was still running: its lines go now.
        _session_lines_drop(session_id)
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
            "pk", "worker", "heartbeat_at", "started_at", "cli_pid", "session_id"
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
            _children_abandon(job["pk"])
            if job["session_id"] is not None:
                # What the lost turn wrote is no part of the conversation (its worker cannot drop it).
                _session_lines_drop(job["session_id"])
    if reaped:
        # Turns that waited for a lost job's session can start now.
        services.job_enqueue()
    Worker.objects.filter(heartbeat_at__lt=timezone.now() - timedelta(hours=1)).delete()
    return reaped


def _children_abandon(parent_id: uuid.UUID) -> None:
    """A reaped job's children not started yet never will be (only their parent runs them)."""
    message = "Its parent job was abandoned before it could start."
    for child_id in Job.objects.filter(parent_id=parent_id, status=JobStatus.PENDING).values_list(
        "pk", flat=True
    ):
        if job_transition(
            job_id=child_id, frm=JobStatus.PENDING, to=JobStatus.CANCELLED, error_message=message
        ):
            _emit_reaped(child_id, message, error=JobStatus.CANCELLED)


def _session_lines_drop(session_id: uuid.UUID) -> None:
    """``session_prune_unfinished``; a failure leaves the lines to the next resume, which skips them."""
    try:
        session_prune_unfinished(session_id)
    except Exception:
        logger.warning(
            "session %s: could not drop the lines of a turn that did not complete", session_id, exc_info=True
        )


def _emit_reaped(job_id: uuid.UUID, message: str, *, error: str = JobStatus.FAILED) -> None:
    """The error event a reader waits for (the job's worker can no longer write it)."""
    try:
        last = JobEvent.objects.filter(job_id=job_id).order_by("-seq").values_list("seq", flat=True).first()
        JobProgress(job_id, start_seq=0 if last is None else last + 1).emit(
            "error", dict(error_event(error, message))
        )
    except Exception:  # a reader still sees the final status
        logger.warning("job %s: could not record why it was reaped", job_id, exc_info=True)
