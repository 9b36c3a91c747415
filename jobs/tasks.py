"""django-q2 tasks. Thin: they take plain data and call services and the runner."""

from __future__ import annotations

from jobs import runner
from jobs.models import JobKind
from jobs.services import job_claim_next, job_reap_stale
from transcription.pipeline import run_transcription


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
    if job.kind == JobKind.TRANSCRIPTION:
        run_transcription(job.pk)
    else:
        runner.run_job(job.pk)
    return str(job.pk)


def reap_stale_jobs() -> int:
    return job_reap_stale()
