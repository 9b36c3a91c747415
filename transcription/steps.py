"""The steps of a transcription job and the state they share.

configure → fetch → probe → normalise → split → transcribe → summaries →
render → publish. Each step has ``setup``/``run``/``cleanup``; cleanup always
runs. A step stops the pipeline by raising ``PipelineError`` (the job fails
with its message); the job's watch (``jobs.watch``) stops it with
``PipelineStopped``. ``transcription.pipeline`` runs them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from jobs.models import Job
from jobs.progress import JobProgress
from jobs.watch import JobStopped
from jobs.watch import JobWatch as _JobWatch
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


# The job's watch stops the pipeline with this (``reason``: a ``StopReason``).
PipelineStopped = JobStopped


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


class JobWatch(_JobWatch):
    """``jobs.watch.JobWatch`` run as a thread beside the steps (every half second).

    Steps call ``check()`` between pieces of work; long waits (ffmpeg, the
    provider, a Claude job) are cut short through ``should_stop`` and the
    callbacks added with ``on_stop``.
    """

    def __init__(self, job_id: uuid.UUID, timeout_seconds: int, *, interval: float = 0.5) -> None:
        super().__init__(job_id, timeout_seconds, interval=interval)


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
                ctx.watch.check_now()  # the child may have ended because this job was stopped
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
