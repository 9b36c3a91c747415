"""What every django-q2 worker process does besides running tasks: keep a
heartbeat, sweep the queue, and stop gracefully.

The jobs table is the queue and a broker message is only a wake-up
(``jobs.tasks.run_pending_jobs``). So that a lost message delays nothing for
long, each worker process runs a small agent thread from its start (django-q2's
``post_spawn`` signal, connected in ``jobs.apps``) that:

- writes the process's ``Worker`` row every ``JOB_HEARTBEAT_SECONDS`` (what
  ``/health`` reads);
- every ``JOB_SWEEP_SECONDS`` fails jobs whose worker died
  (``reaper.job_reap_stale``) and, while its own process is idle and a job
  could start, sends a wake-up: that is how jobs queued across a restart, a
  Redis flush or a lost message start within seconds;
- on SIGTERM/SIGINT stops the process gracefully: the task loop claims
  nothing more, the running job gets ``SHUTDOWN_GRACE_SECONDS`` (the runner
  and the transcription pipeline watch ``shutdown_grace_over()``), then its
  CLI is stopped and the job ends with a reason naming the shutdown; the
  process exits as soon as it is idle, and at the latest
  ``SHUTDOWN_GRACE_SECONDS + JOB_KILL_GRACE_SECONDS + 3`` seconds after the
  signal, killing what is left of its CLI's process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

from django.conf import settings
from django.db import connections
from django.utils import timezone

logger = logging.getLogger(__name__)

_TICK = 0.25


class _State:
    """This process's view of itself (one per worker process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stop_requested_at: float | None = None  # time.monotonic() of the signal
        self.stop_signal = ""
        self.busy = 0  # tasks of ours running in this process (0 or 1)
        self.job_id: uuid.UUID | None = None
        self.cli_pid: int | None = None
        self.agent: threading.Thread | None = None
        # Called when the process leaves (``_leave``), e.g. ``jobs.live.shutdown``.
        self.at_leave: list = []


state = _State()


# -- asked by the task loop, the runner and the pipeline ----------------------------------------


def stopping() -> bool:
    """Whether this process was told to stop: claim nothing more."""
    return state.stop_requested_at is not None


def shutdown_grace_over() -> bool:
    """Whether a running job has had its ``SHUTDOWN_GRACE_SECONDS`` since the stop signal."""
    at = state.stop_requested_at
    return at is not None and time.monotonic() - at >= settings.SHUTDOWN_GRACE_SECONDS


def shutdown_message() -> str:
    return (
        f"The worker was shut down ({state.stop_signal or 'stop requested'}) and the job did not finish "
        f"within SHUTDOWN_GRACE_SECONDS ({settings.SHUTDOWN_GRACE_SECONDS} s); it was stopped."
    )


def request_stop(reason: str) -> None:
    with state.lock:
        if state.stop_requested_at is None:
            state.stop_requested_at = time.monotonic()
            state.stop_signal = reason
            logger.info("worker %s: stopping (%s)", os.getpid(), reason)


@contextlib.contextmanager
def running_task() -> Iterator[None]:
    """Marks this process busy while one of our tasks runs (the agent does not exit under it)."""
    with state.lock:
        state.busy += 1
    try:
        yield
    finally:
        with state.lock:
            state.busy -= 1


@contextlib.contextmanager
def running_job(job_id: uuid.UUID) -> Iterator[None]:
    # A parent job running a child inline nests these: the parent's are restored after.
    outer = state.job_id, state.cli_pid
    state.job_id, state.cli_pid = job_id, None
    try:
        yield
    finally:
        state.job_id, state.cli_pid = outer


def cli_started(pid: int) -> None:
    """The runner tells which process group to kill if the process must exit before the job ends."""
    state.cli_pid = pid


# -- the process's start and its agent ---------------------------------------------------------


def _on_signal(signum, _frame) -> None:
    request_stop(signal.Signals(signum).name)


def on_worker_start(sender=None, proc_name: str = "", **_kwargs) -> None:
    """django-q2's ``post_spawn``: runs in each new worker process."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    from jobs.workspace import workspace_trash_empty

    try:
        workspace_trash_empty()  # what a killed worker of this host left to delete
    except Exception:
        logger.warning("worker %s: could not empty the job folders' trash", os.getpid(), exc_info=True)
    state.agent = threading.Thread(target=_agent, name="claudesvc-worker-agent", daemon=True)
    state.agent.start()


def sweep(*, idle: bool) -> bool:
    """Fail jobs whose worker died; if this process is idle and a job could
    start, send a wake-up (which an idle worker, most likely this one, gets).
    Whether it sent one. Only an idle process asks: a busy one claims the next
    job itself when its job ends."""
    from jobs.queue import job_claimable_exists
    from jobs.reaper import job_reap_stale
    from jobs.services import job_enqueue

    job_reap_stale()
    if idle and job_claimable_exists() and not _wake_ups_waiting():
        job_enqueue()
        return True
    return False


def _wake_ups_waiting() -> bool:
    """Whether the broker holds messages no worker has taken yet: then one will
    reach an idle worker anyway, and another would only pile up."""
    global _broker
    from django_q.brokers import get_broker

    if _broker is None:
        _broker = get_broker()
    try:
        return bool(_broker.queue_size())
    except Exception:
        _broker = None
        raise


_broker = None


def _agent() -> None:
    next_beat = next_sweep = 0.0
    failures = 0
    while True:
        now = time.monotonic()
        if state.stop_requested_at is not None:
            _stop_tick(now)
        try:
            if now >= next_beat:
                next_beat = now + settings.JOB_HEARTBEAT_SECONDS
                _beat()
            if now >= next_sweep and not stopping():
                next_sweep = now + settings.JOB_SWEEP_SECONDS
                sweep(idle=not state.busy)
            failures = 0
        except Exception:
            failures += 1
            # The database or the broker is away (a restart): try again next time, quietly after the first.
            log = logger.warning if failures == 1 else logger.debug
            log("worker %s: heartbeat/sweep failed; retrying", os.getpid(), exc_info=True)
            connections.close_all()
        time.sleep(_TICK)


def _beat() -> None:
    from jobs.models import Worker
    from jobs.services import worker_name

    now = timezone.now()
    name = worker_name()
    updated = Worker.objects.filter(name=name).update(
        heartbeat_at=now, job_id=state.job_id, stopping=stopping()
    )
    if not updated:
        import socket

        Worker.objects.update_or_create(
            name=name,
            defaults={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "cluster": settings.Q_CLUSTER_NAME,
                "started_at": now,
                "heartbeat_at": now,
                "job_id": state.job_id,
                "stopping": stopping(),
            },
        )


def _stop_tick(now: float) -> None:
    if not state.busy:
        _leave(0)
    deadline = settings.SHUTDOWN_GRACE_SECONDS + settings.JOB_KILL_GRACE_SECONDS + 3
    if now - state.stop_requested_at > deadline:
        # The job's own stop did not finish in time: end what is left. The job
        # stays running and is failed by the sweep of another worker (or of the
        # next start on this host) as soon as this process is gone.
        logger.error("worker %s: job %s did not stop in time; exiting", os.getpid(), state.job_id)
        if state.cli_pid:
            with contextlib.suppress(OSError):
                os.killpg(state.cli_pid, signal.SIGKILL)
        _leave(1)


def _leave(code: int) -> None:
    from jobs.models import Worker
    from jobs.services import worker_name

    for callback in list(state.at_leave):
        with contextlib.suppress(Exception):
            callback()
    with contextlib.suppress(Exception):
        Worker.objects.filter(name=worker_name()).delete()
    logging.shutdown()
    os._exit(code)
