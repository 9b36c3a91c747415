"""One watch over a running job: heartbeat, cancel, delete, timeout, shutdown.

The runner (``jobs.runner``, an asyncio loop beside the CLI) and a kind's own
executor (the transcription pipeline, a thread beside its steps) both watch
their job through ``JobWatch``: the same checks in the same order, the same
stop reasons (``StopReason``), the same heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from enum import StrEnum

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from jobs import worker
from jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

# How often the watch reads the job's row (cancel, delete) and may beat.
CONTROL_INTERVAL = 0.5


class StopReason(StrEnum):
    """Why a watch stopped its job."""

    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DELETED = "deleted"
    SHUTDOWN = "shutdown"  # the worker's graceful stop ran out of grace
    LIMIT = "limit"  # the CLI's process tree passed a memory/process/CPU limit (runner only)


class JobStopped(Exception):
    """Raised by ``JobWatch.check()`` once the job was stopped; ``reason`` says why."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(str(reason))
        self.reason = reason


class JobWatch:
    """Watches one running job.

    ``poll()`` (sync) / ``apoll()`` (async) run one round of checks: timeout
    and shutdown every time, the row (deleted? cancel requested?) every
    ``CONTROL_INTERVAL``, with a heartbeat every ``JOB_HEARTBEAT_SECONDS``.
    ``cli_pid``, when set, is written to the row on the next control round.

    Two ways to run it: ``await watch.run(tick=...)`` in an event loop (the
    runner), or ``start()`` a thread and ``check()`` between pieces of work,
    with ``on_stop`` callbacks to cut long waits short (the pipeline).
    """

    def __init__(self, job_id: uuid.UUID, timeout_seconds: float, *, interval: float = 0.25) -> None:
        self.job_id = job_id
        self.timeout_seconds = timeout_seconds
        self.interval = interval
        self.started = time.monotonic()
        self.cli_pid: int | None = None
        self.reason: StopReason | None = None
        self._last_beat = self.started
        self._next_control = 0.0
        self.stopped = threading.Event()
        self._closing = threading.Event()
        self._callbacks: list[Callable[[StopReason], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the checks ----------------------------------------------------------------------

    def remaining_seconds(self) -> int:
        return max(int(self.timeout_seconds - (time.monotonic() - self.started)), 1)

    def due(self) -> StopReason | None:
        """The checks that need no database: timeout, the worker's shutdown."""
        if time.monotonic() - self.started > self.timeout_seconds:
            return StopReason.TIMEOUT
        if worker.shutdown_grace_over():
            return StopReason.SHUTDOWN
        return None

    def _control_due(self) -> bool | None:
        """None: not yet; else whether this round beats too."""
        now = time.monotonic()
        if now < self._next_control:
            return None
        self._next_control = now + CONTROL_INTERVAL
        beat = now - self._last_beat >= settings.JOB_HEARTBEAT_SECONDS
        if beat:
            self._last_beat = now
        return beat

    def control(self, *, beat: bool) -> StopReason | None:
        """One read of the row: deleted, cancel requested; writes the heartbeat and the CLI's pid."""
        row = Job.objects.filter(pk=self.job_id).values("cancel_requested_at", "cli_pid").first()
        if row is None:
            return StopReason.DELETED
        if self.cli_pid is not None and row["cli_pid"] != self.cli_pid:
            Job.objects.filter(pk=self.job_id).update(cli_pid=self.cli_pid)
        if row["cancel_requested_at"]:
            return StopReason.CANCELLED
        if beat:
            Job.objects.filter(pk=self.job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
        return None

    def poll(self) -> StopReason | None:
        reason = self.due()
        if reason is None and (beat := self._control_due()) is not None:
            reason = self.control(beat=beat)
        return reason

    async def apoll(self) -> StopReason | None:
        reason = self.due()
        if reason is None and (beat := self._control_due()) is not None:
            reason = await sync_to_async(self.control)(beat=beat)
        return reason

    # -- in an event loop ----------------------------------------------------------------

    async def run(self, *, tick: Callable[[], StopReason | None] | None = None) -> StopReason:
        """Watch until the job must stop; the reason. ``tick`` runs first in every round
        (the runner samples the CLI's process tree there)."""
        while True:
            await asyncio.sleep(self.interval)
            reason = (tick() if tick else None) or await self.apoll()
            if reason is not None:
                self.reason = reason
                return reason

    # -- in a thread ---------------------------------------------------------------------

    def start(self) -> JobWatch:
        self._thread = threading.Thread(target=self._loop, name=f"watch-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def should_stop(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        """Raise ``JobStopped`` if the job was stopped."""
        if self.reason is not None:
            raise JobStopped(self.reason)

    def check_now(self) -> None:
        """``check()`` after reading the row at once, not at the next control: a
        child job that ended because its parent was cancelled or deleted must not
        be taken for a failure of the parent."""
        if self.reason is None:
            reason = self.control(beat=False)
            if reason is not None and self.reason is None:
                self._trigger(reason)
        self.check()

    def on_stop(self, callback: Callable[[StopReason], None]) -> None:
        """Call ``callback(reason)`` when the job is stopped (at once if it already is)."""
        with self._lock:
            if self.reason is None:
                self._callbacks.append(callback)
                return
        callback(self.reason)

    def _loop(self) -> None:
        try:
            while not self._closing.wait(self.interval):
                reason = self.poll()
                if reason:
                    self._trigger(reason)
                    return
        except Exception:
            logger.exception("job %s: the watch failed", self.job_id)
        finally:
            connections.close_all()

    def _trigger(self, reason: StopReason) -> None:
        logger.info("job %s: stopping it (%s)", self.job_id, reason)
        with self._lock:
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
        self.stopped.set()
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                logger.exception("job %s: stop callback failed", self.job_id)
