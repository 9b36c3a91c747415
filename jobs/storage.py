"""A job's stored files (attachments and artifacts) in Django storage.

Everything of a job lives under ``jobs/<id>/`` of the default storage
(``STORAGES["default"]``), so removing a job's files is removing that prefix,
whichever backend a deployment points storage at.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)


def job_storage_prefix(job_id: uuid.UUID | str) -> str:
    return f"jobs/{uuid.UUID(str(job_id))}"


def stored_files_delete(names: Iterable[str]) -> None:
    """Delete stored files by name; a file already gone is fine."""
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except Exception:
            logger.exception("could not delete stored file %s", name)


def job_files_delete(job_id: uuid.UUID | str, *, known: Iterable[str] = ()) -> None:
    """Delete every stored file of a job: the ``known`` names, and whatever else is under its prefix."""
    stored_files_delete(known)
    prefix = job_storage_prefix(job_id)
    try:
        local = Path(default_storage.path(prefix))
    except NotImplementedError:  # remote storage: walk the prefix through the storage API
        local = None
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    _delete_tree(prefix)


def _delete_tree(prefix: str) -> None:
    try:
        folders, files = default_storage.listdir(prefix)
    except (NotImplementedError, FileNotFoundError):
        return
    stored_files_delete(f"{prefix}/{name}" for name in files)
    for folder in folders:
        _delete_tree(f"{prefix}/{folder}")
