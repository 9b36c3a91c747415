"""django-q2 tasks. Thin: they take plain data and call services and the runner."""

from __future__ import annotations

import logging

from claudesvc.logcontext import bind_job
from jobs import runner
from jobs.models import Job, JobKind, JobStatus
from jobs.services import job_claim_next, job_delete_expired, job_enqueue, job_reap_stale, job_transition
from jobs.sessions import session_clean_idle, session_job_finished, session_job_start
from transcription.pipeline import run_transcription

logger = logging.getLogger(__name__)


def run_next_job() -> str | None:
    """Run the best pending job, if any.

    One of these is enqueued per submitted job. It claims whichever pending job
    comes first by priority rather than a fixed id, which is what makes
    priority work with a FIFO broker; the compare-and-set claim makes a
    redelivered task harmless (it finds nothing, or another pending job).
    """
    job = job_claim_next()
    if job is None:
        return None
    bind_job(job)  # every line of this run carries the job id and its submitting request's id
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
            return str(job.pk)
    try:
        if job.kind == JobKind.TRANSCRIPTION:
            run_transcription(job.pk)
        else:
            runner.run_job(job.pk)
    finally:
        # Whatever happened, the session's next turn must not wait for a wake-up that never comes.
        session_job_finished(job)
    return str(job.pk)


def reap_stale_jobs() -> int:
    reaped = job_reap_stale()
    if reaped and Job.objects.filter(status=JobStatus.PENDING, session__isnull=False).exists():
        # Turns that waited for a lost job's session can start now.
        job_enqueue()
    return reaped


def delete_expired_jobs() -> int:
    return job_delete_expired()


def clean_idle_sessions() -> int:
    return session_clean_idle()
