"""The ``transcription`` job kind as it plugs into the job core (``jobs.kinds``).

``TranscriptionConfig.ready()`` calls ``register()``. The hooks import the
heavy modules (the pipeline, ffmpeg helpers) only when first used.
"""

from __future__ import annotations

from django.conf import settings

from jobs.kinds import job_kind_register


def run(job_id) -> None:
    from transcription.pipeline import run_transcription

    run_transcription(job_id)


def cleanup(job_id) -> None:
    from transcription.services import transcription_discard

    transcription_discard(job_id=job_id)


def details(job):
    """The job's ``Transcription`` row, rendered under ``transcription`` by the Jobs API."""
    return getattr(job, "transcription", None)


def create(*, caller, data):
    """``POST /jobs`` with ``type=transcription``: ``data`` is ``TranscriptionCreateInput``'s."""
    from transcription.services import transcription_create

    return transcription_create(
        caller=caller,
        file=data["file"],
        outputs=data["output"],
        language=data["language"],
        model=data["model"],
    )


def usage_figures(job) -> dict[str, float | int]:
    """Audio, not tokens: the job's usage and cost repeat its child jobs', counted when they ended."""
    from transcription.models import Transcription

    row = Transcription.objects.filter(job_id=job.pk).only("duration_seconds", "chunk_count").first()
    seconds = float(row.duration_seconds or 0) if row else 0.0
    return {
        "audio_seconds": seconds,
        "provider_calls": int(row.chunk_count or 0) if row else 0,
        "provider_cost_usd": seconds / 60 * settings.TRANSCRIPTION_PRICE_PER_MINUTE_USD,
    }


def register() -> None:
    from transcription.options import TranscriptionOptions
    from transcription.serializers import TranscriptionCreateInput, TranscriptionOutput

    job_kind_register(
        "transcription",
        execute=run,
        cleanup=cleanup,
        options=TranscriptionOptions,
        detail_serializer=TranscriptionOutput,
        detail_of=details,
        create_input=TranscriptionCreateInput,
        create=create,
        usage_figures=usage_figures,
    )
