"""Runs one transcription job: a pipeline of small steps in the worker.

configure → fetch → probe → normalise → split → transcribe → summaries →
render → publish. Each step has ``setup``/``run``/``cleanup``; cleanup always
runs. A step stops the pipeline by raising ``PipelineError`` (the job fails
with its message) and the job's watch stops it with ``PipelineStopped`` (the
job was cancelled, deleted or ran out of time). Progress goes into the job's
event stream as ``progress`` events whose ``percent`` only grows, to 100.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from jobs import worker
from jobs.models import Job, JobStatus
from jobs.progress import JobGone, JobProgress
from jobs.services import job_delete, job_transition
from jobs.workspace import workspace_prepare, workspace_remove
from transcription import media, outputs
from transcription.models import Output, Transcription
from transcription.provider import ProviderConfig, ProviderError, ProviderTranscript, VoxtralClient
from transcription.splitting import ChunkPlan, plan_chunks
from transcription.stitching import ChunkTranscript, Segment, plain_text, stitch
from transcription.summaries import SummaryError, claude_write

logger = logging.getLogger(__name__)

SCRATCH_DIR_NAME = "transcription"
# A decode that yields less than this share of the header's duration, with errors, is a damaged file.
_DAMAGED_SHARE = 0.9


class PipelineError(Exception):
    """Stops the pipeline; the job fails with this message."""


class PipelineStopped(Exception):
    """The job was cancelled, deleted or timed out; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- progress ---------------------------------------------------------------------------


class ProgressData(TypedDict, total=False):
    type: Literal["progress"]
    step: str
    percent: int
    message: str
    chunk: int  # the chunk that just finished, from 1
    chunks_done: int
    chunks: int


class TranscriptionProgress:
    """Writes ``progress`` events; ``percent`` never goes down."""

    def __init__(self, events: JobProgress) -> None:
        self.events = events
        self.percent = 0

    def report(self, step: str, percent: float, message: str, **extra: Any) -> None:
        self.percent = max(self.percent, min(int(percent), 100))
        data: ProgressData = {"type": "progress", "step": step, "percent": self.percent, "message": message}
        data.update(extra)  # type: ignore[typeddict-item]
        self.events.emit("progress", dict(data))

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        self.events.emit(type_, data)


# -- watching the job ---------------------------------------------------------------------


class JobWatch:
    """A thread that keeps the job's heartbeat and notices cancel, delete and timeout.

    Steps call ``check()`` between pieces of work; long waits (ffmpeg, the
    provider, a Claude job) are cut short through ``should_stop`` and the
    callbacks added with ``on_stop``.
    """

    def __init__(self, job_id: uuid.UUID, timeout_seconds: int, *, interval: float = 0.5) -> None:
        self.job_id = job_id
        self.timeout_seconds = timeout_seconds
        self.interval = interval
        self.started = time.monotonic()
        self.reason: str | None = None
        self.stopped = threading.Event()
        self._closing = threading.Event()
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{job_id}", daemon=True)

    def start(self) -> JobWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=30)

    def remaining_seconds(self) -> int:
        return max(int(self.timeout_seconds - (time.monotonic() - self.started)), 1)

    def should_stop(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        if self.reason is not None:
            raise PipelineStopped(self.reason)

    def on_stop(self, callback) -> None:
        """Call ``callback(reason)`` when the job is stopped (at once if it already is)."""
        with self._lock:
            if self.reason is None:
                self._callbacks.append(callback)
                return
        callback(self.reason)

    def _loop(self) -> None:
        last_beat = time.monotonic()
        try:
            while not self._closing.wait(self.interval):
                reason = self._poll(beat=time.monotonic() - last_beat >= settings.JOB_HEARTBEAT_SECONDS)
                if time.monotonic() - last_beat >= settings.JOB_HEARTBEAT_SECONDS:
                    last_beat = time.monotonic()
                if reason:
                    self._trigger(reason)
                    return
        except Exception:
            logger.exception("job %s: the watch failed", self.job_id)
        finally:
            connections.close_all()

    def _poll(self, *, beat: bool) -> str | None:
        if time.monotonic() - self.started > self.timeout_seconds:
            return "timeout"
        if worker.shutdown_grace_over():
            return "shutdown"
        row = Job.objects.filter(pk=self.job_id).values("cancel_requested_at").first()
        if row is None:
            return "deleted"
        if row["cancel_requested_at"]:
            return "cancelled"
        if beat:
            Job.objects.filter(pk=self.job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
        return None

    def _trigger(self, reason: str) -> None:
        logger.info("job %s: stopping the transcription (%s)", self.job_id, reason)
        with self._lock:
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
        self.stopped.set()
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                logger.exception("job %s: stop callback failed", self.job_id)


# -- the pipeline's state -------------------------------------------------------------------


@dataclass
class Chunk:
    plan: ChunkPlan
    path: Path


@dataclass
class Context:
    job: Job
    transcription: Transcription
    progress: TranscriptionProgress
    watch: JobWatch
    scratch: Path
    output: Path
    provider: ProviderConfig | None = None
    source: Path | None = None
    probe: media.AudioProbe | None = None
    wav: Path | None = None
    duration: float = 0.0
    chunks: list[Chunk] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    summary: str = ""
    bullets: str = ""
    claude_runs: list = field(default_factory=list)
    claude_jobs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def wanted(self) -> set[str]:
        return set(self.transcription.outputs)

    @property
    def text(self) -> str:
        return plain_text(self.segments)


class Step(abc.ABC):
    """One stage of the pipeline. ``percent`` is where the bar stands when it starts."""

    name = "step"
    percent = 0
    message = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def able_to_run(self) -> bool:
        return True

    def setup(self) -> None:
        self.ctx.progress.report(self.name, self.percent, self.message)

    @abc.abstractmethod
    def run(self) -> None:
        """The step's work; raises PipelineError to stop the pipeline cleanly."""

    def cleanup(self) -> None:  # noqa: B027 - most steps have nothing to clean up
        """Undo what setup/run left behind; runs whatever happened."""


class Configure(Step):
    name = "configure"
    percent = 0
    message = "Checking the configuration"

    def run(self) -> None:
        config = ProviderConfig.from_settings()
        if not config.api_key:
            raise PipelineError(
                "Transcription is not configured: the setting MISTRAL_API_KEY (the Voxtral provider's API key) is missing."
            )
        self.ctx.provider = config


class FetchAudio(Step):
    """Copies the upload from shared storage onto this worker's disk, then drops the stored copy."""

    name = "fetch"
    percent = 1
    message = "Fetching the audio"

    def run(self) -> None:
        row = self.ctx.transcription
        if not row.audio:
            raise PipelineError("The uploaded audio is no longer available.")
        suffix = Path(row.audio_name).suffix.lower()[:8]
        target = self.ctx.scratch / f"source{suffix if suffix.isascii() else ''}"
        with row.audio.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1024 * 1024)
        self.ctx.source = target
        row.audio.delete(save=False)
        Transcription.objects.filter(pk=row.pk).update(audio="")


class Probe(Step):
    name = "probe"
    percent = 2
    message = "Reading the audio file"

    def run(self) -> None:
        try:
            self.ctx.probe = media.probe_audio(self.ctx.source, should_stop=self.ctx.watch.should_stop)
        except media.MediaError as exc:
            raise PipelineError(f"The audio file cannot be used: {exc}") from exc
        too_long = media.duration_problem(self.ctx.probe.duration)
        if too_long:
            raise PipelineError(f"The audio file cannot be used: {too_long}")


class Normalise(Step):
    name = "normalise"
    percent = 3
    message = "Converting the audio to 16 kHz mono"

    def run(self) -> None:
        ctx = self.ctx
        ctx.wav = ctx.scratch / "audio.wav"
        try:
            decoded, errors = media.normalise(
                ctx.source, ctx.wav, demuxer=ctx.probe.demuxer, should_stop=ctx.watch.should_stop
            )
        except media.MediaError as exc:
            raise PipelineError(f"The audio file could not be decoded: {exc}") from exc
        if decoded < 0.1:
            raise PipelineError(
                "The audio file could not be decoded: it holds no audible audio"
                + (f" ({media.last_lines(errors)})" if errors.strip() else "")
            )
        too_long = media.duration_problem(decoded)
        if too_long:
            raise PipelineError(f"The audio file cannot be used: {too_long}")
        header = ctx.probe.duration
        if errors.strip() and header and decoded < header * _DAMAGED_SHARE:
            raise PipelineError(
                f"The audio file is damaged: only {decoded:.1f} s of its {header:.1f} s could be decoded "
                f"({media.last_lines(errors)})"
            )
        ctx.duration = decoded
        logger.info(
            "job %s: %.1f s of audio (header said %s)",
            ctx.job.pk,
            decoded,
            f"{header:.1f} s" if header else "nothing",
        )

    def cleanup(self) -> None:
        if self.ctx.source:
            self.ctx.source.unlink(missing_ok=True)


class Split(Step):
    name = "split"
    percent = 8
    message = "Splitting the audio"

    def run(self) -> None:
        ctx = self.ctx
        silences: list[tuple[float, float]] = []
        if ctx.duration > settings.TRANSCRIPTION_CHUNK_SECONDS:
            silences = media.detect_silences(
                ctx.wav,
                noise_db=settings.TRANSCRIPTION_SILENCE_DB,
                min_seconds=settings.TRANSCRIPTION_SILENCE_MIN_MS / 1000,
                should_stop=ctx.watch.should_stop,
            )
        plans = plan_chunks(
            ctx.duration,
            silences,
            max_seconds=settings.TRANSCRIPTION_CHUNK_SECONDS,
            search_seconds=settings.TRANSCRIPTION_SILENCE_SEARCH_SECONDS,
            overlap_seconds=settings.TRANSCRIPTION_CHUNK_OVERLAP_SECONDS,
        )
        folder = ctx.scratch / "chunks"
        folder.mkdir(exist_ok=True)
        for plan in plans:
            ctx.watch.check()
            path = folder / f"chunk_{plan.index:04d}.flac"
            media.cut(ctx.wav, path, start=plan.start, end=plan.end, should_stop=ctx.watch.should_stop)
            ctx.chunks.append(Chunk(plan, path))
        hard = sum(1 for p in plans if p.overlap)
        logger.info(
            "job %s: %s chunk(s), %s cut(s) in silence, %s hard",
            ctx.job.pk,
            len(plans),
            len(plans) - 1 - hard,
            hard,
        )

    def cleanup(self) -> None:
        if self.ctx.wav:
            self.ctx.wav.unlink(missing_ok=True)


class Transcribe(Step):
    """Sends the chunks to the provider, several at a time, and stitches the answers in order."""

    name = "transcribe"
    percent = 12
    done_percent = 85

    @property
    def message(self) -> str:  # type: ignore[override]
        return f"Transcribing {len(self.ctx.chunks)} chunk(s)"

    def run(self) -> None:
        ctx = self.ctx
        answers = asyncio.run(self._transcribe_all())
        parts = [ChunkTranscript(chunk.plan, a.text, a.segments, a.language) for chunk, a in answers]
        ctx.segments = stitch(parts)
        language = ctx.transcription.language
        ctx.language = language or next((p.language for p in parts if p.language), "")

    async def _transcribe_all(self) -> list[tuple[Chunk, ProviderTranscript]]:
        """Every chunk's answer, in chunk order; up to VOXTRAL_CONCURRENCY requests at a time."""
        ctx = self.ctx
        total = len(ctx.chunks)
        language = ctx.transcription.language
        limit = asyncio.Semaphore(settings.VOXTRAL_CONCURRENCY)
        report = sync_to_async(ctx.progress.report)
        answers: dict[int, tuple[Chunk, ProviderTranscript]] = {}

        async def one(client: VoxtralClient, chunk: Chunk) -> tuple[Chunk, ProviderTranscript]:
            async with limit:
                try:
                    return chunk, await client.transcribe(chunk.path, language=language)
                except ProviderError as exc:
                    raise PipelineError(
                        f"Chunk {chunk.plan.index + 1} of {total} could not be transcribed: {exc}"
                    ) from exc

        async with VoxtralClient(ctx.provider) as client:
            tasks = [asyncio.create_task(one(client, chunk)) for chunk in ctx.chunks]
            try:
                pending = set(tasks)
                while pending:
                    done, pending = await asyncio.wait(
                        pending, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                    )
                    ctx.watch.check()
                    for task in done:
                        chunk, answer = task.result()
                        answers[chunk.plan.index] = (chunk, answer)
                        chunk.path.unlink(missing_ok=True)
                        await report(
                            self.name,
                            self.percent + (self.done_percent - self.percent) * len(answers) / total,
                            f"Chunk {len(answers)} of {total} transcribed",
                            chunk=chunk.plan.index + 1,
                            chunks_done=len(answers),
                            chunks=total,
                        )
            finally:
                # Stopping (or one chunk failing) cancels the requests still in flight.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await sync_to_async(connections.close_all)()
        return [answers[i] for i in sorted(answers)]

    def cleanup(self) -> None:
        for chunk in self.ctx.chunks:
            chunk.path.unlink(missing_ok=True)


class Summaries(Step):
    """The summary and the key points, each written by a Claude job."""

    name = "summaries"
    percent = 85
    message = "Claude writes the summary and key points"

    def able_to_run(self) -> bool:
        return bool(self.ctx.wanted & {Output.COMPACT, Output.BULLETS})

    def run(self) -> None:
        ctx = self.ctx
        tasks = [t for t in (Output.COMPACT, Output.BULLETS) if t in ctx.wanted]
        text = ctx.text
        if not text.strip():
            raise PipelineError("No speech was recognised, so there is nothing to summarise.")
        for number, task in enumerate(tasks):
            ctx.watch.check()
            if number:
                ctx.progress.report(
                    task, self.percent + 10 * number / len(tasks), f"Claude writes the {task}"
                )

            def stop_child(child_id) -> None:
                ctx.claude_jobs.append(str(child_id))
                ctx.watch.on_stop(
                    lambda _reason, cid=child_id: Job.objects.filter(pk=cid, cancel_requested_at=None).update(
                        cancel_requested_at=timezone.now()
                    )
                )

            try:
                written = claude_write(
                    parent=ctx.job,
                    task=task,
                    transcript=text,
                    language=ctx.language,
                    timeout=ctx.watch.remaining_seconds(),
                    on_child=stop_child,
                )
            except SummaryError as exc:
                ctx.watch.check()
                raise PipelineError(str(exc)) from exc
            ctx.claude_runs.append(written)
            if task == Output.COMPACT:
                ctx.summary = written.text
            else:
                ctx.bullets = written.text


class Render(Step):
    name = "render"
    percent = 95
    message = "Writing the files"

    def run(self) -> None:
        ctx = self.ctx
        folder = ctx.output
        if Output.PLAIN in ctx.wanted:
            outputs.write_text(folder, ctx.segments)
            outputs.write_srt(folder, ctx.segments)
            outputs.write_vtt(folder, ctx.segments)
        if Output.COMPACT in ctx.wanted:
            outputs.write_markdown(folder, outputs.SUMMARY_FILE, ctx.summary)
        if Output.BULLETS in ctx.wanted:
            outputs.write_markdown(folder, outputs.BULLETS_FILE, ctx.bullets)
        if Output.DOC in ctx.wanted:
            ctx.watch.check()
            outputs.render_pdf(
                folder,
                outputs.Document(
                    title=f"Transcript of {ctx.transcription.audio_name}",
                    created_at=ctx.job.created_at,
                    duration_seconds=ctx.duration,
                    language=ctx.language,
                    segments=ctx.segments,
                    summary=ctx.summary,
                    bullets=ctx.bullets,
                ),
            )


class Publish(Step):
    name = "publish"
    percent = 99
    message = "Publishing the files"

    def run(self) -> None:
        self.ctx.files = outputs.publish(self.ctx.job.pk)


STEPS: list[type[Step]] = [
    Configure,
    FetchAudio,
    Probe,
    Normalise,
    Split,
    Transcribe,
    Summaries,
    Render,
    Publish,
]


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
    usage: dict[str, int] = {}
    for run in runs:
        for key, value in (run.usage or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                usage[key] = usage.get(key, 0) + value
    costs = [r.cost_usd for r in runs if r.cost_usd is not None]
    turns = [r.num_turns for r in runs if r.num_turns is not None]
    return {
        "usage": usage or None,
        "cost_usd": sum(costs) if costs else None,
        "num_turns": sum(turns) if turns else None,
    }


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
        outcome = _stopped(job, "deleted")
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


def _stopped(job: Job, reason: str) -> dict[str, Any]:
    if reason == "timeout":
        return {
            "status": JobStatus.TIMEOUT,
            "error_message": f"The job exceeded its timeout of {job.timeout_seconds} s and was stopped.",
        }
    if reason == "cancelled":
        return {"status": JobStatus.CANCELLED, "error_message": "Cancelled by the caller"}
    if reason == "shutdown":
        return {"status": JobStatus.FAILED, "error_message": worker.shutdown_message()}
    return {"status": "deleted"}


def _finish(job: Job, ctx: Context | None, outcome: dict[str, Any], progress, *, duration_ms: int) -> None:
    status = outcome.pop("status")
    claude_jobs = ctx.claude_jobs if ctx else []
    if status == "deleted":
        # The caller deleted the job: its files and the Claude jobs it started go too.
        for child in Job.objects.filter(pk__in=claude_jobs):
            job_delete(job=child)
        workspace_remove(job.pk)
        logger.info("job %s was deleted while transcribing; stopped", job.pk)
        return
    if status != JobStatus.COMPLETED:
        try:
            progress.emit("error", {"type": "error", "error": status, "message": outcome["error_message"]})
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
