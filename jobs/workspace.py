"""Where a job's files live on the worker's disk.

``JOBS_ROOT/<id>/work`` is the CLI's working directory; the caller's
attachments are copied into ``work/attachments`` (a folder of their own, so an
upload named ``out`` or ``CLAUDE.md`` cannot collide with the output folder or
pass for project configuration); ``work/out`` is the only place the safe tool
policy lets it write, and what lands there becomes the job's artifacts.
``JOBS_ROOT/<id>/cli.pid`` sits outside the working directory, so the job can
neither read nor forge it.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

OUTPUT_DIR_NAME = "out"
ATTACHMENTS_DIR_NAME = "attachments"


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def output(self) -> Path:
        return self.work / OUTPUT_DIR_NAME

    @property
    def attachments(self) -> Path:
        return self.work / ATTACHMENTS_DIR_NAME

    @property
    def pidfile(self) -> Path:
        return self.root / "cli.pid"


def job_paths(job_id: uuid.UUID | str) -> JobPaths:
    return JobPaths(root=Path(settings.JOBS_ROOT) / str(uuid.UUID(str(job_id))))


def workspace_prepare(job_id: uuid.UUID | str) -> JobPaths:
    paths = job_paths(job_id)
    paths.output.mkdir(parents=True, exist_ok=True)
    return paths


def workspace_remove(job_id: uuid.UUID | str) -> None:
    shutil.rmtree(job_paths(job_id).root, ignore_errors=True)
