"""django-q2 tasks. Thin: they take plain data and call services and the runner.

The jobs table is the queue. ``run_pending_jobs`` is the only message the
broker carries for jobs, and it names none: it is a wake-up, sent when a job
is submitted, when a session's turn ends, and by idle workers' sweeps
(``jobs.worker``) while pending jobs wait. The worker that gets it runs
pending jobs one after the other until none is left, so a lost message costs
nothing and a duplicated one finds nothing to do.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connections

from claudesvc.logcontext import bind_job
from jobs import live, loop, worker
from jobs.kinds import job_kind
from jobs.models import JobStatus
from jobs.progress import ajob_ended_push_after_run, job_ended_push
from jobs.queue import job_claim, job_claim_next
from jobs.reaper import job_reap_stale, job_release_broken_off
from jobs.services import job_delete_expired, job_enqueue, job_transition
from jobs.sessions import (
    session_clean_idle,
    session_job_finished,
    session_job_finished_after_run,
    session_job_start,
)

logger = logging.getLogger(__name__)


def run_pending_jobs() -> int:
    """Run pending jobs, best first, until none can start or this worker stops; the number run.

    It claims no new job once it has run for ``JOB_TIMEOUT_SECONDS`` (so the
    task stays within django-q2's own timeout) and hands the rest to a fresh
    wake-up instead.
    """
    started = time.monotonic()
    ran = 0
    with worker.running_task():
        while not worker.stopping():
            if time.monotonic() - started > settings.JOB_TIMEOUT_SECONDS:
                job_enqueue()
                break
            if run_next_job() is None:
                break
            ran += 1
    return ran


def run_next_job() -> str | None:
    """Claim the best pending job and run it; its id, or None if none could start.

    The claim is a compare-and-set on the row (``queue.job_claim_next``),
    so no job starts twice, whoever else is claiming.
    """
    if worker.stopping():
        return None
    job = job_claim_next()
    if job is None:
        return None
    bind_job(job)  # every line of this run carries the job id and its submitting request's id
    run_claimed_job(job)
    return str(job.pk)


def run_claimed_job(job) -> None:
    """Run a job this worker claimed, to its end: the one path every job takes
    after its claim, from the queue (``run_next_job``) or from a parent job
    (``run_child_job``). A run that breaks off settles its job (``_release``)."""
    with worker.running_task(), worker.running_job(job.pk):
        try:
            _run(job)
        except Exception as exc:
            _release(job.pk, exc, cli_started=worker.state.cli_pid is not None)
            raise


def run_child_job(job_id) -> bool:
    """Claim a child job its parent created unqueued (``enqueue=False``) and run it here, inline.

    The parent already holds this worker, so its child needs no second one: a
    parent waiting for its children can never starve a one-worker cluster.
    The child is claimed exactly as a queued job (compare-and-set
    pending -> running) and runs through ``run_claimed_job``. False if it
    could not be claimed (cancelled before it started).
    """
    job = job_claim(job_id=job_id)
    if job is None:
        return False
    run_claimed_job(job)
    return True


def _release(job_id, error: Exception, *, cli_started: bool) -> None:
    """A run that broke off with an error leaves its job running; settle it
    (``reaper.job_release_broken_off``). The error is most often the database
    going away, and a process's connection pool may take a while to reconnect
    after it is back: retry for up to ``JOB_STALE_SECONDS``, after which the
    reaper's backstop ends the job anyway."""
    deadline = time.monotonic() + settings.JOB_STALE_SECONDS
    while True:
        try:
            done = job_release_broken_off(job_id=job_id, error=error, cli_started=cli_started)
            logger.warning("job %s: its run broke off (%s); %s", job_id, error, done or "no longer running")
            return
        except Exception:
            if time.monotonic() > deadline:
                logger.warning("job %s: its run broke off and could not be settled; the reaper will", job_id)
                return
            connections.close_all()
            time.sleep(1)


def _run(job) -> None:
    if job.session_id is not None:
        try:
            session_job_start(job)
        except Exception as exc:
            logger.exception("job %s: its session could not be prepared", job.pk)
            job_transition(
                job_id=job.pk,
                frm=JobStatus.RUNNING,
                to=JobStatus.FAILED,
                error_message=f"The job's session could not be prepared: {exc}",
            )
            session_job_finished(job)
            return
    try:
        job_kind(job.kind).execute(job.pk)
    finally:
        try:
            # Whatever happened, the session's next turn must not wait for a wake-up that never
            # comes. And first: a client that sees this turn end may send the next one at once,
            # which must find the conversation this one left (else it starts afresh, jobs.live_routing).
            # A run that reached its final status recorded it there already (``runner``).
            session_job_finished_after_run(job)
        finally:
            # Readers following the job end now, not at their next poll.
            _ended_push(job.pk)


def _ended_push(job_id) -> None:
    """``progress.job_ended_push``, from the worker's persistent loop if it runs (a session's
    turns and pre-started CLIs run there): it keeps its channel layer connection."""
    if not loop.running() or loop.in_loop_thread():
        job_ended_push(job_id)
        return
    try:
        loop.run(ajob_ended_push_after_run(job_id), timeout=10)
    except Exception:  # the push is an optimisation: readers poll the table anyway
        logger.warning("job %s: pushing its end failed", job_id, exc_info=True)


def run_live_turn(job) -> None:
    """A session turn claimed by the poller of the worker holding its live CLI
    (``jobs.live``): run as the task loop runs a claimed job."""
    bind_job(job)
    with worker.running_task():
        try:
            _run(job)
        except Exception as exc:
            logger.exception("job %s: its live run broke off", job.pk)
            _release(job.pk, exc, cli_started=True)


live.set_turn_runner(run_live_turn)


def reap_stale_jobs() -> int:
    """The minutely schedule: a backstop behind the workers' own sweeps."""
    return job_reap_stale()


def delete_expired_jobs() -> int:
    return job_delete_expired()


def clean_idle_sessions() -> int:
    return session_clean_idle()
