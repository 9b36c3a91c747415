"""Live sessions: a compat session's CLI stays alive between turns (issue 18).

A turn of a compat session runs on this worker process's persistent event loop
(``jobs.loop``) through a ``ClaudeSDKClient`` (the CLI's stream-json input).
When the turn completes, the client is kept for ``SESSION_KEEPALIVE_SECONDS``
and the session's row names this worker (``ClaudeSession.live_worker``); the
session's next turn goes to that CLI: no CLI start, no resume.

Routing. Other workers leave a pending turn of a session alone while its
holder has a fresh heartbeat and the lease (``live_until``) lasts
(``claimable_filter``, applied by ``services._claimable``). The holder polls
for its sessions' pending turns every ``SESSION_LIVE_POLL_MS`` and claims
them through the normal claim (``services.job_claim_next`` restricted to its
sessions), so per-key running caps and the one-turn-at-a-time rule hold; it
runs them on threads of its own beside whatever its task loop runs.

Reuse only when safe. A live CLI is used for a turn only if it is the one
that served the session's latest completed turn (``resume_job``, set by
``session_turn_start``), with the same model, tool policy, system prompt,
output limit and schema; anything else closes it and the turn starts as
before (resume from the stored conversation, or afresh when the client's
history no longer matches, see ``jobs.compat_api.fingerprint``).

Isolation. The CLI is started exactly like any job's (``runner.build_options``:
the launcher, sandbox, limits, env allow-list, tool policy, the session's
own CLI home, explicit ``--resume`` of the session's own conversation, never
``--continue``), with its scratch and output folders in a folder of the live
process (``<JOBS_ROOT>/sessions/<id>.live``); a turn's output files are moved
to the turn's own job folder. Per-turn watching stays the runner's (cancel,
delete, timeout, memory/CPU/process limits): a turn that does not complete
kills the live CLI, and the next turn resumes from the stored conversation.

Bounds. ``SESSION_LIVE_MAX_PER_WORKER`` live CLIs per worker process (least
recently used closed first), idle ones closed after the keep-alive, all closed
when the worker stops or exits (``shutdown``, also registered as a
multiprocessing finalizer for django-q2's recycling). A SIGKILLed worker
takes its CLIs with it: the launcher sets PR_SET_PDEATHSIG and bwrap runs
with ``--die-with-parent``, and the CLI was forked by the loop's thread,
which lives as long as the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from jobs import loop as live_loop
from jobs.live_routing import enabled

logger = logging.getLogger(__name__)


def serves(job) -> bool:
    """Whether ``job`` runs through a live CLI: a turn of a compat session the caller named, live sessions on,
    no per-job spending cap (``--max-budget-usd`` counts a whole CLI process's spend)."""
    opts = job.options or {}
    return (
        enabled()
        and job.session_id is not None
        # named by the caller (X-Request-ID, metadata.user_id): a one-off call's session gets no next turn
        and bool(opts.get("live_session"))
        and job.max_budget_usd is None
        and not opts.get("api_fallback")
        and bool(opts.get("cwd"))
    )


def _signature(job) -> str:
    """What a CLI is started with that a turn cannot change on a running process."""
    opts = job.options or {}
    return json.dumps(
        [
            job.model,
            job.tool_policy,
            job.system_prompt,
            opts.get("max_tokens"),
            opts.get("json_schema"),
            bool(opts.get("partial_messages")),
            opts.get("cwd"),
        ],
        sort_keys=True,
        default=str,
    )


def _me() -> str:
    from jobs.services import worker_name

    return worker_name()


# -- the registry of this process's live CLIs ------------------------------------------------


@dataclass
class LiveCli:
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

    def stderr(self, line: str) -> None:
        if self.sink is not None:
            self.sink(line)

    def alive(self) -> bool:
        if self.pid is None or self.closed:
            return False
        try:
            os.killpg(self.pid, 0)
        except OSError:
            return False
        return True

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

    def set_busy(self, session_id, busy: bool) -> None:
        with self.lock:
            entry = self.entries.get(session_id)
            if entry is not None:
                entry.busy = busy


registry = _Registry()


def live_pids() -> dict[str, int]:
    """Session id -> pid of this process's live CLIs (for tests and diagnostics)."""
    return {str(e.session_id): e.pid for e in registry.all() if e.pid}


# -- the session's row: who holds it ------------------------------------------------------------


def _hold(session_id, until: float) -> None:
    from jobs.models import ClaudeSession

    ClaudeSession.objects.filter(pk=session_id).update(
        live_worker=_me(), live_until=timezone.now() + timedelta(seconds=until - time.time())
    )


def _release(session_ids) -> None:
    """This worker no longer holds these sessions; wake a worker for a turn that waits on one."""
    from jobs.models import ClaudeSession, Job, JobStatus
    from jobs.services import job_enqueue

    ids = list(session_ids)
    if not ids:
        return
    ClaudeSession.objects.filter(pk__in=ids, live_worker=_me()).update(live_worker="", live_until=None)
    if Job.objects.filter(session_id__in=ids, status=JobStatus.PENDING).exists():
        job_enqueue()


# -- running a turn on a live CLI (hook in runner.JobRun._consume) -------------------------------


def _measure_from(base_pid: int):
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


def _live_root(session_id) -> Path:
    return (
        Path(settings.JOBS_ROOT) / "sessions" / f"{uuid.UUID(str(session_id))}.live" / uuid.uuid4().hex[:12]
    )


async def _start(run, signature: str) -> LiveCli:
    from claude_agent_sdk import ClaudeSDKClient

    from jobs.cli_options import build_options
    from jobs.sessions import session_store_options
    from jobs.workspace import JobPaths

    job = run.job
    entry = LiveCli(session_id=job.session_id, signature=signature, root=_live_root(job.session_id))
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
        _kill(entry)
        _schedule_close(entry)
        raise
    logger.info("session %s: live CLI started with pid %s", job.session_id, entry.pid)
    _ensure_background()
    return entry


def _kill(entry: LiveCli) -> None:
    entry.closed = True
    registry.remove(entry)
    if entry.pid:
        with contextlib.suppress(OSError):
            os.killpg(entry.pid, signal.SIGKILL)


async def _close(entry: LiveCli, reason: str) -> None:
    """End a live CLI: its process group, the client, its folder, the session's hold."""
    if not entry.closed:
        logger.info("session %s: live CLI %s closed (%s)", entry.session_id, entry.pid, reason)
    _kill(entry)
    if entry.client is not None:
        # It is gone either way (killed above); the client only tidies up.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(entry.client.disconnect(), 5)
        entry.client = None
    shutil.rmtree(entry.root, ignore_errors=True)
    await sync_to_async(_release_quietly, thread_sensitive=False)(entry.session_id)


def _release_quietly(session_id) -> None:
    try:
        _release([session_id])
    except Exception:
        logger.warning("session %s: could not release its live hold", session_id, exc_info=True)
    finally:
        connections.close_all()


def _schedule_close(entry: LiveCli, reason: str = "turn did not complete") -> None:
    _kill(entry)
    # A context of its own: the closing outlives the turn that asked for it.
    asyncio.get_running_loop().create_task(_close(entry, reason), context=contextvars.Context())


async def relay_turn(run) -> None:
    """Run ``run``'s turn on the session's live CLI (started now if there is none to reuse)."""
    from jobs.sandbox import cli_limits

    job = run.job
    signature = _signature(job)
    wanted = (job.options or {}).get("resume_job") or ""
    entry = registry.get(job.session_id)
    if entry is not None:
        why = ""
        if not entry.alive():
            why = "its process ended"
        elif entry.signature != signature:
            why = "the turn asks for other settings"
        elif not wanted or entry.last_job != wanted:
            why = "the turn does not continue its conversation"
        if why:
            await _close(entry, why)
            entry = None
    reused = entry is not None
    if entry is None:
        entry = await _start(run, signature)
    else:
        entry.busy = True
        entry.sink = run.stderr_lines.append
        run.pid = entry.pid
        run.measure, _ = _measure_from(entry.pid)
    run.live = {"pid": entry.pid, "reused": reused, "turn": entry.turns + 1}
    entry.store._writer_id = job.pk  # this turn's transcript lines are this job's
    keepalive = settings.SESSION_KEEPALIVE_SECONDS
    lease = keepalive + run.timeout + 60
    if entry.lease_until - time.time() < lease:
        entry.lease_until = time.time() + 2 * lease
        await sync_to_async(_hold)(job.session_id, entry.lease_until)
    kept = False
    try:
        await entry.client.query(run.prompt)
        await run._relay(entry.client.receive_response())
        from jobs import worker

        total_cpu = sum(run.measure.cpu_by_pid.values())
        kept = (
            run.result is not None
            and not run.result.is_error
            and run.stop_reason is None
            and entry.alive()
            and not worker.stopping()
            # rlimits count a process's whole life: retire it well before its CPU limit.
            and total_cpu < cli_limits().cpu_seconds / 2
        )
    finally:
        entry.sink = None
        _move_outputs(entry.output, run.paths.output)
        if kept:
            entry.last_job, entry.turns = str(job.pk), entry.turns + 1
            entry.last_used, entry.busy = time.monotonic(), False
            run.live_kept = True
            _evict_over_limit(keep=entry)
        else:
            _schedule_close(entry)


def _move_outputs(src: Path, dest: Path) -> None:
    try:
        items = list(src.iterdir())
    except OSError:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        try:
            shutil.move(str(item), str(dest / item.name))
        except OSError:
            logger.warning("could not move live output %s", item, exc_info=True)


def _evict_over_limit(*, keep: LiveCli) -> None:
    entries = registry.all()
    excess = len(entries) - settings.SESSION_LIVE_MAX_PER_WORKER
    if excess <= 0:
        return
    idle = sorted((e for e in entries if not e.busy and e is not keep), key=lambda e: e.last_used)
    for entry in idle[:excess]:
        _schedule_close(entry, "least recently used beyond SESSION_LIVE_MAX_PER_WORKER")
    if excess > len(idle):
        _schedule_close(keep, "SESSION_LIVE_MAX_PER_WORKER live CLIs are busy")
        keep.busy = True  # not offered to the poller while it closes


def outcome_fields(run, fields: dict[str, Any]) -> dict[str, Any]:
    """What a live turn adds to its job's final update (hook in ``runner.JobRun._outcome``)."""
    live = getattr(run, "live", None)
    if not live:
        return {}
    options = dict(fields.get("options") or run.job.options or {})
    options["live"] = live
    return {"options": options, "cli_pid": live["pid"]}


# -- background: idle closing and the poller ---------------------------------------------------

_background_lock = threading.Lock()
_background_started = False
_pool: ThreadPoolExecutor | None = None


def _ensure_background() -> None:
    global _background_started, _pool
    with _background_lock:
        if _background_started:
            return
        _background_started = True
        _pool = ThreadPoolExecutor(
            max_workers=settings.SESSION_LIVE_MAX_PER_WORKER + 1, thread_name_prefix="claudesvc-live"
        )
        live_loop.submit(_idle_closer())
        threading.Thread(target=_poller, name="claudesvc-live-poller", daemon=True).start()
        import multiprocessing.util

        # django-q2 recycles a worker process by letting it return: close the CLIs then.
        multiprocessing.util.Finalize(None, shutdown, exitpriority=50)
        # The worker's own exit (``worker._leave``): close them, release their sessions.
        from jobs import worker

        worker.state.at_leave.append(lambda: shutdown(wait_for_turns=False))


async def _idle_closer() -> None:
    while True:
        await asyncio.sleep(1)
        now = time.monotonic()
        for entry in registry.all():
            if entry.busy:
                continue
            if not entry.alive():
                await _close(entry, "its process ended")
            elif now - entry.last_used > settings.SESSION_KEEPALIVE_SECONDS:
                await _close(
                    entry, f"idle for SESSION_KEEPALIVE_SECONDS ({settings.SESSION_KEEPALIVE_SECONDS} s)"
                )


def _poller() -> None:
    from jobs import worker
    from jobs.models import Job, JobStatus
    from jobs.queue import job_claim_next

    me = _me()
    interval = settings.SESSION_LIVE_POLL_MS / 1000
    released = False
    next_check = 0.0
    while True:
        time.sleep(interval)
        try:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1
                _close_gone(me)
            if worker.stopping():
                if not released:
                    released = True
                    _release([e.session_id for e in registry.all()])
                time.sleep(0.2)
                continue
            ids = registry.idle_ids()
            if not ids:
                continue
            if not Job.objects.filter(status=JobStatus.PENDING, session_id__in=ids).exists():
                continue
            job = job_claim_next(worker=me, only_sessions=ids)
            if job is None:
                continue
            registry.set_busy(job.session_id, True)
            assert _pool is not None
            _pool.submit(_run_claimed, job)
        except Exception:
            logger.warning("live session poller: a look for new turns failed", exc_info=True)
            connections.close_all()
            time.sleep(0.5)


def _close_gone(me: str) -> None:
    """Close the live CLIs of sessions deleted meanwhile (a session's or its key's
    deletion) or no longer held by this worker."""
    from jobs.models import ClaudeSession

    # A hold this process no longer has a CLI for (its release failed): let the turn go elsewhere.
    stray = ClaudeSession.objects.filter(live_worker=me).exclude(
        pk__in=[e.session_id for e in registry.all()]
    )
    stray_ids = list(stray.values_list("pk", flat=True))
    if stray_ids:
        _release(stray_ids)
    entries = [e for e in registry.all() if not e.busy]
    if not entries:
        return
    kept = set(
        ClaudeSession.objects.filter(pk__in=[e.session_id for e in entries], live_worker=me).values_list(
            "pk", flat=True
        )
    )
    for entry in entries:
        if entry.session_id not in kept and entry.lease_until:
            _kill(entry)
            live_loop.submit(_close(entry, "its session was deleted or is held elsewhere"))


def _run_claimed(job) -> None:
    """Run a turn the poller claimed, as the task loop runs a claimed job (``tasks.run_live_turn``,
    handed over by ``set_turn_runner``: the task module sits above this one)."""
    try:
        if _turn_runner is None:
            raise RuntimeError("no turn runner: jobs.tasks was not imported in this worker")
        _turn_runner(job)
    finally:
        entry = registry.get(job.session_id)
        # The turn never reached its CLI (deleted, failed to prepare): offer the CLI again.
        if entry is not None and entry.busy and not entry.closed and entry.last_job != str(job.pk):
            entry.busy = False
        connections.close_all()


_turn_runner: Callable[[Any], None] | None = None


def set_turn_runner(run: Callable[[Any], None]) -> None:
    """How the poller runs a claimed turn: ``jobs.tasks`` hands over ``run_live_turn``."""
    global _turn_runner
    _turn_runner = run


def shutdown(timeout: float = 8, *, wait_for_turns: bool = True) -> None:
    """Close every live CLI of this process and release its sessions (worker stop or exit).

    On django-q2's recycling (the process's task loop returned) live turns may
    still run on this process's threads: the process counts as stopping (its
    sessions' next turns go elsewhere) and they get ``SHUTDOWN_GRACE_SECONDS``
    (and their stop) to end, as on a graceful stop."""
    from jobs import worker

    if wait_for_turns and registry.all():
        worker.request_stop("recycled")
        deadline = time.monotonic() + settings.SHUTDOWN_GRACE_SECONDS + settings.JOB_KILL_GRACE_SECONDS + 3
        while worker.state.busy and time.monotonic() < deadline:
            time.sleep(0.05)
    entries = registry.all()
    if entries and live_loop._loop is not None and not live_loop.in_loop_thread():

        async def close_all() -> None:
            await asyncio.gather(*(_close(e, "the worker stops") for e in entries), return_exceptions=True)

        try:
            live_loop.run(close_all(), timeout)
        except Exception:
            logger.warning("live sessions: closing them at shutdown failed", exc_info=True)
    for entry in entries:
        _kill(entry)
    try:
        from jobs.models import ClaudeSession

        held = list(ClaudeSession.objects.filter(live_worker=_me()).values_list("pk", flat=True))
        _release(held)
    except Exception:
        logger.warning("live sessions: could not release this worker's sessions", exc_info=True)
