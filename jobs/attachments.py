"""Files sent with a job: stored with the job's row, copied next to the CLI before it starts."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from claudesvc.auth import Caller
from jobs.models import Attachment, Job
from jobs.services import job_create
from jobs.storage import stored_files_delete

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024


class AttachmentUnavailable(Exception):
    """A stored attachment could not be copied into the job's working directory."""


def job_create_with_attachments(
    *, caller: Caller, prompt: str, model: str | None, uploads: Sequence[UploadedFile], **job_fields: Any
) -> Job:
    """Create a job and store its uploaded files, all or nothing.

    ``uploads`` come from ``jobs.uploads.AttachmentUploadHandler`` (type
    decided from content, ``sha256`` computed while receiving). The row and the
    files are written together: if anything fails, the transaction rolls back
    and the files already put into storage are deleted again. The job is
    enqueued only after the commit, so a worker never sees it without its files.
    """
    stored: list[str] = []
    try:
        with transaction.atomic():
            job = job_create(caller=caller, prompt=prompt, model=model, **job_fields)
            for upload in uploads:
                attachment = Attachment(
                    job=job,
                    name=upload.name,
                    content_type=upload.content_type,
                    size=upload.size,
                    sha256=upload.sha256,
                )
                # A temporary upload on the same filesystem is moved, not copied.
                attachment.file.save(upload.name, upload, save=False)
                stored.append(attachment.file.name)
                attachment.save()
    except BaseException:
        stored_files_delete(stored)
        raise
    if uploads:
        logger.info("job %s: %d attachment(s) stored", job.pk, len(uploads))
    return job


@dataclass(frozen=True)
class PlacedAttachment:
    path: Path
    content_type: str
    size: int


def attachments_place(*, job_id: uuid.UUID, folder: Path) -> list[PlacedAttachment]:
    """Copy the job's attachments from storage into ``folder`` for the CLI to open."""
    placed = []
    attachments = list(Attachment.objects.filter(job_id=job_id).order_by("id"))
    if attachments:
        folder.mkdir(parents=True, exist_ok=True)
    for attachment in attachments:
        target = folder / attachment.name
        # Names were checked on upload; a name that would still leave the folder is refused here too.
        if target.parent != folder:
            raise AttachmentUnavailable(f"attachment {attachment.name!r} has an invalid name")
        try:
            with attachment.file.open("rb") as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
        except OSError as exc:
            raise AttachmentUnavailable(
                f"attachment {attachment.name} could not be read from storage: {exc}"
            ) from exc
        placed.append(
            PlacedAttachment(path=target, content_type=attachment.content_type, size=attachment.size)
        )
    return placed
