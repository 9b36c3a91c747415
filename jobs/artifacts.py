"""Files a job produced: whatever lands in its output folder becomes a downloadable ``Artifact``.

The runner collects when a job ends; other pipelines that write into a job's
output folder (transcription) call ``artifacts_collect`` themselves. Only
regular files count: symlinks, and anything that resolves outside the folder,
are skipped, so a job cannot hand out a file it merely points at.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction

from claudesvc.errors import NotFound
from jobs.filetypes import FileSniffer
from jobs.models import Artifact, Job
from jobs.storage import stored_files_delete
from jobs.workspace import job_paths

logger = logging.getLogger(__name__)

_READ_CHUNK = 1024 * 1024
_MAX_NAME = 255


def _output_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(name relative to ``root`` with "/", path) of every regular file under it, sorted by name."""
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):  # a symlinked output folder is not followed
            return
    except FileNotFoundError:
        return
    real_root = root.resolve()
    found = []
    # os.walk does not descend into symlinked folders (followlinks=False).
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file_name in files:
            path = Path(folder) / file_name
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode) or not path.resolve().is_relative_to(real_root):
                continue
            name = path.relative_to(root).as_posix()
            if len(name) > _MAX_NAME or any(ch < " " for ch in name):
                logger.warning("output file %r skipped: unusable name", name)
                continue
            found.append((name, path))
    yield from sorted(found)


def _open_regular(path: Path):
    """Open without following a symlink swapped in since the walk, and never block on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _collect_one(job_id: uuid.UUID, name: str, path: Path, existing: Artifact | None) -> Artifact | None:
    try:
        handle = _open_regular(path)
    except OSError:
        return existing
    if handle is None:
        return existing
    with handle:
        digest = hashlib.sha256()
        sniffer = FileSniffer(name=name, strict=False)
        size = 0
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            sniffer.feed(chunk)
            size += len(chunk)
        sha256 = digest.hexdigest()
        if existing is not None and existing.sha256 == sha256 and existing.size == size:
            return existing
        handle.seek(0)
        artifact = existing or Artifact(job_id=job_id, name=name)
        old_file = existing.file.name if existing else None
        artifact.content_type = sniffer.finish()[:100]
        artifact.size = size
        artifact.sha256 = sha256
        artifact.file.save(name.rsplit("/", 1)[-1], File(handle), save=False)
    try:
        with transaction.atomic():
            artifact.save()
    except IntegrityError:
        # The job was deleted meanwhile: do not leave its file behind.
        stored_files_delete([artifact.file.name])
        raise
    if old_file:
        stored_files_delete([old_file])
    return artifact


def artifacts_collect(*, job_id: uuid.UUID | str) -> list[Artifact]:
    """Store every regular file of the job's output folder as an ``Artifact`` of the job.

    Safe to call more than once: a file already collected with the same
    content is left alone, a changed one replaces its earlier version. Returns
    the job's artifacts, by name. At most ``ARTIFACTS_MAX_FILES`` files are kept.
    """
    job_id = uuid.UUID(str(job_id))
    if not Job.objects.filter(pk=job_id).exists():
        raise NotFound("Job not found")
    existing = {a.name: a for a in Artifact.objects.filter(job_id=job_id)}
    files = list(_output_files(job_paths(job_id).output))
    new = [f for f in files if f[0] not in existing]
    room = max(settings.ARTIFACTS_MAX_FILES - len(existing), 0)
    if len(new) > room:
        logger.warning("job %s wrote %d new files; keeping the first %d", job_id, len(new), room)
        files = [f for f in files if f[0] in existing] + new[:room]
    collected = dict(existing)
    for name, path in files:
        try:
            artifact = _collect_one(job_id, name, path, existing.get(name))
        except IntegrityError:
            if not Job.objects.filter(pk=job_id).exists():
                logger.info("job %s was deleted while its files were collected", job_id)
                return []
            continue  # another collector stored this name at the same moment
        if artifact is not None:
            collected[name] = artifact
    if len(collected) != len(existing):
        logger.info("job %s: %d artifact(s)", job_id, len(collected))
    return [collected[name] for name in sorted(collected)]
