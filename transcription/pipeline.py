"""Runs one transcription job: a pipeline of small steps in the worker
(the steps are ``transcription.steps``).

configure → fetch → probe → normalise → split → transcribe → summaries →
render → publish. Each step has ``setup``/``run``/``cleanup``; cleanup always
runs. A step stops the pipeline by raising ``PipelineError`` (the job fails
with its message) and the job's watch stops it with ``PipelineStopped`` (the
job was cancelled, deleted or ran out of time). Progress goes into the job's
event stream as ``progress`` events whose ``percent`` only grows, to 100.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from typing import Any

from jobs import worker
from jobs.models import Job, JobStatus
from jobs.outcomes import CANCELLED_MESSAGE, error_event, timeout_message
from jobs.progress import JobGone, JobProgress
from jobs.services import job_delete, job_transition
from jobs.usage import Usage, usage_sum
from jobs.watch import StopReason
from jobs.workspace import workspace_prepare, workspace_remove
from transcription.models import Output, Transcription
from transcription.steps import (  # noqa: F401 - the pipeline's names, as before the split
    SCRATCH_DIR_NAME,
    STEPS,
    Chunk,
    Context,
    JobWatch,
    PipelineError,
    PipelineStopped,
    ProgressData,
    Step,
    TranscriptionProgress,
)

logger = logging.getLogger(__name__)


def run_steps(ctx: Context, steps: list[type[Step]] = STEPS) -> None:
    for step_class in steps:
        step = step_class(ctx)
        ctx.watch.check()
        if not step.able_to_run():
            continue
        try:
            step.setup()
            step.run()
        finally:
            step.cleanup()


# -- the result -----------------------------------------------------------------------------


def compose_result(wanted: set[str], *, text: str, summary: str, bullets: str) -> str:
    """The text outputs in ``result``: the one asked for, or each under a heading."""
    parts = []
    if Output.COMPACT in wanted:
        parts.append(("Summary", summary))
    if Output.BULLETS in wanted:
        parts.append(("Key points", bullets))
    if Output.PLAIN in wanted:
        parts.append(("Transcript", text))
    if len(parts) == 1:
        return parts[0][1]
    return "\n\n".join(f"## {title}\n\n{body}" for title, body in parts)


def _claude_usage(runs: list) -> dict[str, Any]:
    """The child jobs' usage, cost and turns summed (``jobs.usage.Usage``)."""
    return usage_sum(Usage.of(r.usage, r.cost_usd, r.num_turns) for r in runs).job_fields()


# -- the entry point ------------------------------------------------------------------------


def run_transcription(job_id: uuid.UUID | str) -> None:
    """Run a transcription job that was claimed (moved to running). Blocks until it ends."""
    job = Job.objects.select_related("transcription").get(pk=job_id)
    started = time.monotonic()
    paths = workspace_prepare(job.pk)
    scratch = paths.root / SCRATCH_DIR_NAME
    scratch.mkdir(parents=True, exist_ok=True)
    progress = TranscriptionProgress(JobProgress(job.pk, start_seq=job.events.count()))
    watch = JobWatch(job.pk, job.timeout_seconds).start()
    ctx: Context | None = None
    outcome: dict[str, Any]
    try:
        ctx = Context(
            job=job,
            transcription=job.transcription,
            progress=progress,
            watch=watch,
            scratch=scratch,
            output=paths.output,
        )
        run_steps(ctx)
        watch.check()
        outcome = _completed(ctx)
    except PipelineStopped as stop:
        outcome = _stopped(job, stop.reason)
    except JobGone:
        outcome = _stopped(job, StopReason.DELETED)
    except PipelineError as exc:
        outcome = {"status": JobStatus.FAILED, "error_message": str(exc)}
    except Exception as exc:
        logger.exception("job %s: the transcription failed unexpectedly", job.pk)
        outcome = {
            "status": JobStatus.FAILED,
            "error_message": f"The transcription failed unexpectedly: {exc!r}",
        }
    finally:
        watch.close()
        shutil.rmtree(scratch, ignore_errors=True)
        _drop_upload(job.pk)
    _finish(job, ctx, outcome, progress, duration_ms=int((time.monotonic() - started) * 1000))


def _drop_upload(job_id) -> None:
    """The stored upload is not needed once the job has run, however it ended."""
    row = Transcription.objects.filter(pk=job_id).exclude(audio="").first()
    if row is not None:
        row.audio.delete(save=False)
        Transcription.objects.filter(pk=job_id).update(audio="")


def _completed(ctx: Context) -> dict[str, Any]:
    text = ctx.text
    Transcription.objects.filter(pk=ctx.transcription.pk).update(
        detected_language=ctx.language[:16],
        duration_seconds=ctx.duration,
        chunk_count=len(ctx.chunks),
        text=text,
        segments=[{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in ctx.segments],
        summary=ctx.summary,
        bullets=ctx.bullets,
        files=ctx.files,
        claude_jobs=ctx.claude_jobs,
    )
    result = compose_result(ctx.wanted, text=text, summary=ctx.summary, bullets=ctx.bullets)
    ctx.progress.report("done", 100, "Transcription finished")
    ctx.progress.emit(
        "result",
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": result,
            "files": ctx.files,
            "language": ctx.language,
            "duration_seconds": round(ctx.duration, 3),
            "chunks": len(ctx.chunks),
        },
    )
    return {"status": JobStatus.COMPLETED, "result": result, "exit_code": 0, **_claude_usage(ctx.claude_runs)}


def _stopped(job: Job, reason: StopReason) -> dict[str, Any]:
    if reason == StopReason.TIMEOUT:
        return {"status": JobStatus.TIMEOUT, "error_message": timeout_message(job.timeout_seconds)}
    if reason == StopReason.CANCELLED:
        return {"status": JobStatus.CANCELLED, "error_message": CANCELLED_MESSAGE}
    if reason == StopReason.SHUTDOWN:
        return {"status": JobStatus.FAILED, "error_message": worker.shutdown_message()}
    return {"status": StopReason.DELETED}


def _finish(job: Job, ctx: Context | None, outcome: dict[str, Any], progress, *, duration_ms: int) -> None:
    status = outcome.pop("status")
    claude_jobs = ctx.claude_jobs if ctx else []
    if status == StopReason.DELETED:
        # The caller deleted the job: its files and the Claude jobs it started go too.
        for child in Job.objects.filter(pk__in=claude_jobs):
            job_delete(job=child)
        workspace_remove(job.pk)
        logger.info("job %s was deleted while transcribing; stopped", job.pk)
        return
    if status != JobStatus.COMPLETED:
        try:
            progress.emit("error", dict(error_event(status, outcome["error_message"])))
        except JobGone:
            workspace_remove(job.pk)
            return
        if claude_jobs:
            Transcription.objects.filter(pk=job.pk).update(claude_jobs=claude_jobs)
    moved = job_transition(
        job_id=job.pk, frm=JobStatus.RUNNING, to=status, duration_ms=duration_ms, **outcome
    )
    logger.info(
        "job %s finished: %s in %s ms%s",
        job.pk,
        status,
        duration_ms,
        "" if moved else " (status was changed elsewhere; result not recorded)",
    )
