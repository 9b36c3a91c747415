"""Writes for transcription jobs: create one from an upload, clean up after one."""

from __future__ import annotations

import logging
import uuid

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from claudesvc.auth import Caller
from jobs.models import Job, JobKind
from jobs.services import job_create, job_delete
from transcription.models import Transcription

logger = logging.getLogger(__name__)


def transcription_create(
    *, caller: Caller, file: UploadedFile, outputs: list[str], language: str = "", model: str | None = None
) -> Job:
    """The job row, and beside it the upload in storage, in one transaction.

    If storing the file or writing a row fails, neither the rows nor the stored
    file remain.
    """
    name = (file.name or "audio").rsplit("/", 1)[-1][:255]
    stored: Transcription | None = None
    try:
        with transaction.atomic():
            job = job_create(
                caller=caller,
                prompt=f"Transcription of {name}",
                model=model,
                kind=JobKind.TRANSCRIPTION,
                source="jobs",
                options={"outputs": outputs, "language": language},
            )
            stored = Transcription(
                job=job, audio_name=name, audio_size=file.size, outputs=outputs, language=language
            )
            stored.audio.save(name, file, save=False)
            stored.save()
    except Exception:
        if stored is not None and stored.audio:
            stored.audio.delete(save=False)
        raise
    logger.info(
        "job %s: transcription of %s (%s bytes), outputs %s", job.pk, name, file.size, ",".join(outputs)
    )
    return job


def transcription_discard(*, job_id: uuid.UUID) -> None:
    """Before a transcription job's row goes: its stored upload and the Claude jobs it ran."""
    row = Transcription.objects.filter(pk=job_id).first()
    if row is None:
        return
    if row.audio:
        row.audio.delete(save=False)
    for child in Job.objects.filter(pk__in=row.claude_jobs or []):
        job_delete(job=child)
