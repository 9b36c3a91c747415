"""Where a job's files live on the worker's disk.

``JOBS_ROOT/<id>/work`` is the CLI's working directory; the caller's
attachments are copied into ``work/attachments`` (a folder of their own, so an
upload named ``out`` or ``CLAUDE.md`` cannot collide with the output folder or
pass for project configuration); ``work/out`` is the only place the safe tool
policy lets it write, and what lands there becomes the job's artifacts.
``JOBS_ROOT/<id>/cli.pid`` sits outside the working directory, so the job can
neither read nor forge it.

``JOBS_ROOT/<id>/home`` is the CLI's own home (``HOME``, with its
``CLAUDE_CONFIG_DIR`` in ``home/.claude``: settings, transcripts, saved tool
outputs) and ``JOBS_ROOT/<id>/tmp`` its ``TMPDIR``: nothing of one job's CLI is
kept where another job's CLI looks. A compat session keeps one home for all its
turns (``session_home``), beside its folder, so a turn can resume the last.
The whole ``JOBS_ROOT/<id>`` goes when the job ends (after its outputs were
collected; ``JOB_KEEP_WORKDIR_SECONDS`` later if set), is deleted or expires.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

OUTPUT_DIR_NAME = "out"
ATTACHMENTS_DIR_NAME = "attachments"
# The credentials file a logged-in CLI keeps in its config folder (CLAUDE_HOME/.claude).
CREDENTIALS_FILE = ".credentials.json"

logger = logging.getLogger(__name__)


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

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


def config_dir(home: Path) -> Path:
    """The CLI's ``CLAUDE_CONFIG_DIR`` inside a home."""
    return home / ".claude"


def session_home(session_id: uuid.UUID | str) -> Path:
    """The CLI home every turn of one compat session shares (its transcripts are there)."""
    return Path(settings.JOBS_ROOT) / "sessions" / f"{uuid.UUID(str(session_id))}.home"


def home_prepare(home: Path) -> Path:
    """Make a CLI home; a login of the operator's CLI (``CLAUDE_HOME``) is copied in, nothing else."""
    config = config_dir(home)
    config.mkdir(parents=True, exist_ok=True)
    login = config_dir(Path(settings.CLAUDE_HOME)) / CREDENTIALS_FILE
    if login.is_file() and not (config / CREDENTIALS_FILE).exists():
        shutil.copyfile(login, config / CREDENTIALS_FILE)
        (config / CREDENTIALS_FILE).chmod(0o600)
    return home


def job_paths(job_id: uuid.UUID | str) -> JobPaths:
    return JobPaths(root=Path(settings.JOBS_ROOT) / str(uuid.UUID(str(job_id))))


def workspace_prepare(job_id: uuid.UUID | str) -> JobPaths:
    paths = job_paths(job_id)
    paths.output.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    home_prepare(paths.home)
    return paths


def workspace_remove(job_id: uuid.UUID | str) -> None:
    """Everything of a job on this host: working folder, CLI home, scratch files,
    also what its end took away to delete in the background (``_remove_soon``):
    when this returns, no byte of the job's folders is left."""
    root = job_paths(job_id).root
    shutil.rmtree(root, ignore_errors=True)
    for trash in root.parent.glob(f"{TRASH_PREFIX}{root.name}-*"):
        # The background deletion may be half-way through it: until it is gone (2 s at most).
        deadline = time.monotonic() + 2
        while trash.exists() and time.monotonic() < deadline:
            shutil.rmtree(trash, ignore_errors=True)


def workspace_finished(job_id: uuid.UUID | str) -> None:
    """A job ended and its outputs were collected: drop the work copy of its
    attachments (storage keeps the original) and, unless
    ``JOB_KEEP_WORKDIR_SECONDS`` keeps it a while for inspection, the rest."""
    paths = job_paths(job_id)
    if not settings.JOB_KEEP_WORKDIR_SECONDS:
        _remove_soon(paths.root)
        return
    shutil.rmtree(paths.attachments, ignore_errors=True)
    # The sweep measures the keep time from here.
    (paths.root / "finished").touch()


TRASH_PREFIX = ".trash-"


def _remove_soon(root: Path) -> None:
    """Take a job's folder away at once and delete it in the background.

    A CLI home holds dozens of files; deleting them took 20-100 ms that every
    job's final status waited for. A rename within ``JOBS_ROOT`` is one
    syscall, and nothing looks for the folder under its new name; what a
    killed worker left behind goes with the next ``workspace_sweep`` (or
    ``workspace_trash_empty`` at a worker's start).
    """
    trash = root.with_name(f"{TRASH_PREFIX}{root.name}-{uuid.uuid4().hex[:8]}")
    try:
        root.rename(trash)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(root, ignore_errors=True)
        return
    threading.Thread(target=shutil.rmtree, args=(trash, True), name="claudesvc-workspace-removal").start()


def workspace_trash_empty() -> int:
    """Delete what ``_remove_soon`` left behind (its process ended first); how many."""
    removed = 0
    try:
        entries = list(os.scandir(settings.JOBS_ROOT))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(TRASH_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


def workspace_sweep() -> int:
    """Remove the folders of jobs that ended more than ``JOB_KEEP_WORKDIR_SECONDS`` ago."""
    root = Path(settings.JOBS_ROOT)
    cutoff = time.time() - settings.JOB_KEEP_WORKDIR_SECONDS
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        marker = Path(entry.path) / "finished"
        try:
            if marker.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info("removed the folders of %d finished job(s)", removed)
    return removed
