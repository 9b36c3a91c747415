"""The live CLIs of this worker process (``jobs.live`` runs session turns on them).

The registry of live CLIs by session, starting one for a session's turn (the
same options, sandbox and limits as any job's CLI), closing and killing it,
and the session row's hold (``ClaudeSession.live_worker`` / ``live_until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from jobs.sandbox import KeptCli

logger = logging.getLogger(__name__)


def worker_me() -> str:
    from jobs.services import worker_name

    return worker_name()


# -- the registry of this process's live CLIs ------------------------------------------------


@dataclass
class LiveCli(KeptCli):
    session_id: uuid.UUID
    signature: str
    root: Path
    client: Any = None
    pid: int | None = None
    store: Any = None
    last_job: str = ""
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = True
    turns: int = 0
    lease_until: float = 0.0  # time.time() the session row's live_until was last set to
    sink: Callable[[str], None] | None = None
    closed: bool = False

    @property
    def output(self) -> Path:
        return self.root / "work" / "out"


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[uuid.UUID, LiveCli] = {}

    def get(self, session_id) -> LiveCli | None:
        with self.lock:
            return self.entries.get(session_id)

    def put(self, entry: LiveCli) -> None:
        with self.lock:
            self.entries[entry.session_id] = entry

    def remove(self, entry: LiveCli) -> None:
        with self.lock:
            if self.entries.get(entry.session_id) is entry:
                del self.entries[entry.session_id]

    def all(self) -> list[LiveCli]:
        with self.lock:
            return list(self.entries.values())

    def idle_ids(self) -> list[uuid.UUID]:
        with self.lock:
            return [sid for sid, e in self.entries.items() if not e.busy]

    def take(self, session_id) -> LiveCli | None:
        """The session's live CLI, marked busy for a turn the poller claimed (None if it has none)."""
        with self.lock:
            entry = self.entries.get(session_id)
            if entry is not None:
                entry.busy = True
            return entry


registry = _Registry()


def live_pids() -> dict[str, int]:
    """Session id -> pid of this process's live CLIs (for tests and diagnostics)."""
    return {str(e.session_id): e.pid for e in registry.all() if e.pid}


# -- the session's row: who holds it ------------------------------------------------------------


def hold(session_id, until: float) -> None:
    from jobs.models import ClaudeSession

    ClaudeSession.objects.filter(pk=session_id).update(
        live_worker=worker_me(), live_until=timezone.now() + timedelta(seconds=until - time.time())
    )


def release(session_ids) -> None:
    """This worker no longer holds these sessions; wake a worker for a turn that waits on one."""
    from jobs.models import ClaudeSession, Job, JobStatus
    from jobs.services import job_enqueue

    ids = list(session_ids)
    if not ids:
        return
    ClaudeSession.objects.filter(pk__in=ids, live_worker=worker_me()).update(live_worker="", live_until=None)
    if Job.objects.filter(session_id__in=ids, status=JobStatus.PENDING).exists():
        job_enqueue()


# -- running a turn on a live CLI (hook in runner.JobRun._consume) -------------------------------


def measure_from(base_pid: int):
    """A measure of the CLI's tree that counts only this turn's CPU time."""
    from jobs.measure import Measure as _Measure

    class _TurnMeasure(_Measure):
        base: dict[int, float]

        @property
        def cpu_ms(self) -> int:
            return int(
                sum(max(0.0, v - self.base.get(pid, 0.0)) for pid, v in self.cpu_by_pid.items()) * 1000
            )

    start = _Measure()
    start.sample(base_pid)
    measure = _TurnMeasure()
    measure.base = dict(start.cpu_by_pid)
    return measure, sum(start.cpu_by_pid.values())


def live_root(session_id) -> Path:
    return (
        Path(settings.JOBS_ROOT) / "sessions" / f"{uuid.UUID(str(session_id))}.live" / uuid.uuid4().hex[:12]
    )


async def start(run, signature: str) -> LiveCli:
    from claude_agent_sdk import ClaudeSDKClient

    from jobs.cli_options import build_options
    from jobs.sessions import session_store_options
    from jobs.workspace import JobPaths

    job = run.job
    entry = LiveCli(session_id=job.session_id, signature=signature, root=live_root(job.session_id))
    paths = JobPaths(root=entry.root)
    paths.output.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    options = build_options(job, paths, stderr_sink=entry.stderr)
    options = session_store_options(job, options)
    # The launcher writes the CLI's pid where this turn's watcher looks for it.
    options.env["CLAUDESVC_PIDFILE"] = str(run.paths.pidfile)
    entry.store = options.session_store
    entry.sink = run.stderr_lines.append
    entry.client = ClaudeSDKClient(options)
    registry.put(entry)
    try:
        await entry.client.connect()
        entry.pid = int(run.paths.pidfile.read_text())
    except BaseException:
        kill(entry)
        schedule_close(entry)
        raise
    logger.info("session %s: live CLI started with pid %s", job.session_id, entry.pid)
    return entry


def kill(entry: LiveCli) -> None:
    registry.remove(entry)
    entry.kill_group()


async def close(entry: LiveCli, reason: str) -> None:
    """End a live CLI: its process group, the client, its folder, the session's hold."""
    if not entry.closed:
        logger.info("session %s: live CLI %s closed (%s)", entry.session_id, entry.pid, reason)
    kill(entry)
    if entry.client is not None:
        # It is gone either way (killed above); the client only tidies up.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(entry.client.disconnect(), 5)
        entry.client = None
    shutil.rmtree(entry.root, ignore_errors=True)
    await sync_to_async(release_quietly, thread_sensitive=False)(entry.session_id)


def release_quietly(session_id) -> None:
    try:
        release([session_id])
    except Exception:
        logger.warning("session %s: could not release its live hold", session_id, exc_info=True)
    finally:
        connections.close_all()


def schedule_close(entry: LiveCli, reason: str = "turn did not complete") -> None:
    kill(entry)
    # A context of its own: the closing outlives the turn that asked for it.
    asyncio.get_running_loop().create_task(close(entry, reason), context=contextvars.Context())
