"""Live sessions: a compat session's CLI stays alive between turns (issue 18).

A turn of a compat session runs on this worker process's persistent event loop
(``jobs.loop``) through a ``ClaudeSDKClient`` (the CLI's stream-json input).
When the turn completes, the client is kept for ``SESSION_KEEPALIVE_SECONDS``
and the session's row names this worker (``ClaudeSession.live_worker``); the
session's next turn goes to that CLI: no CLI start, no resume.

Routing. The task loops, the holder's own included, leave a pending turn of a
session alone while its holder has a fresh heartbeat and the lease
(``live_until``) lasts (``jobs.live_routing.claimable_filter``, applied by
``jobs.queue``): the holder's poller alone claims it. The web
rings the holder's poller once a turn of one of its sessions is committed
(``jobs.wakeup.holder_ring``: a bell of the worker's on this machine, a Redis
``PUBLISH`` with Redis); the poller also polls every ``SESSION_LIVE_POLL_MS``,
so a lost ring costs that delay. It claims the turn directly
(``queue.job_claim_session_turn``: the session's earliest turn by
compare-and-set, within the owner's running cap, one turn per session; owners
with a budget through the fair claim) and runs it on a thread of its own
beside whatever its task loop runs.

Reuse only when safe. A live CLI is used for a turn only if it is the one
that served the session's latest completed turn (``resume_job``, set by
``session_turn_start``), with the same model, tool policy, system prompt,
output limit and schema; anything else closes it and the turn starts as
before (resume from the stored conversation, or afresh when the client's
history no longer matches, see ``jobs.compat_api.fingerprint``).

Isolation. The CLI is started exactly like any job's (``cli_options.build_options``:
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
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

from jobs import live_cli
from jobs import loop as live_loop
from jobs.live_routing import enabled
from jobs.wakeup import HolderDoorbell

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


async def relay_turn(run) -> None:
    """Run ``run``'s turn on the session's live CLI (started now if there is none to reuse)."""
    from jobs.sandbox import cli_limits

    job = run.job
    signature = _signature(job)
    wanted = (job.options or {}).get("resume_job") or ""
    entry = live_cli.registry.get(job.session_id)
    if entry is not None:
        why = ""
        if not entry.alive():
            why = "its process ended"
        elif entry.signature != signature:
            why = "the turn asks for other settings"
        elif not wanted or entry.last_job != wanted:
            why = "the turn does not continue its conversation"
        if why:
            await live_cli.close(entry, why)
            entry = None
    reused = entry is not None
    if entry is None:
        entry = await live_cli.start(run, signature)
        _ensure_background()
    else:
        entry.busy = True
        entry.sink = run.stderr_lines.append
        run.pid = entry.pid
        run.measure, _ = live_cli.measure_from(entry.pid)
    # The row names the CLI running the turn (cancel across hosts, the reaper, tests), as for any job.
    run.pid = entry.pid
    run.watch.cli_pid = entry.pid
    run.live = {"pid": entry.pid, "reused": reused, "turn": entry.turns + 1}
    entry.store._writer_id = job.pk  # this turn's transcript lines are this job's
    keepalive = settings.SESSION_KEEPALIVE_SECONDS
    lease = keepalive + run.timeout + 60
    if entry.lease_until - time.time() < lease:
        entry.lease_until = time.time() + 2 * lease
        await sync_to_async(live_cli.hold)(job.session_id, entry.lease_until)
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
            live_cli.schedule_close(entry)


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


def _evict_over_limit(*, keep: live_cli.LiveCli) -> None:
    entries = live_cli.registry.all()
    excess = len(entries) - settings.SESSION_LIVE_MAX_PER_WORKER
    if excess <= 0:
        return
    idle = sorted((e for e in entries if not e.busy and e is not keep), key=lambda e: e.last_used)
    for entry in idle[:excess]:
        live_cli.schedule_close(entry, "least recently used beyond SESSION_LIVE_MAX_PER_WORKER")
    if excess > len(idle):
        live_cli.schedule_close(keep, "SESSION_LIVE_MAX_PER_WORKER live CLIs are busy")
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
_doorbell: HolderDoorbell | None = None


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
        global _doorbell
        # Listening before this worker names itself a session's holder (``live_cli.hold``).
        _doorbell = HolderDoorbell(live_cli.worker_me())
        threading.Thread(target=_poller, args=(_doorbell,), name="claudesvc-live-poller", daemon=True).start()
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
        for entry in live_cli.registry.all():
            if entry.busy or entry.pid is None:
                continue  # a turn's, or still starting (its start closes it if that fails)
            if not entry.alive():
                await live_cli.close(entry, "its process ended")
            elif now - entry.last_used > settings.SESSION_KEEPALIVE_SECONDS:
                await live_cli.close(
                    entry, f"idle for SESSION_KEEPALIVE_SECONDS ({settings.SESSION_KEEPALIVE_SECONDS} s)"
                )


def _poller(doorbell: HolderDoorbell, stop: threading.Event | None = None) -> None:
    """Claim the turns of this worker's idle live CLIs' sessions as they come, for the life of
    the process (or until ``stop`` is set: tests)."""
    from jobs import worker
    from jobs.queue import job_claim_session_turn

    me = live_cli.worker_me()
    interval = settings.SESSION_LIVE_POLL_MS / 1000
    released = False
    next_check = 0.0
    while stop is None or not stop.is_set():
        # Rung by the web for each turn of a session held here; the poll is the fallback.
        doorbell.wait(interval)
        try:
            if worker.stopping():
                if not released:
                    released = True
                    live_cli.release([e.session_id for e in live_cli.registry.all()])
                time.sleep(0.2)
                continue
            ids = live_cli.registry.idle_ids()
            job = job_claim_session_turn(worker=me, session_ids=ids) if ids else None
            if job is not None:
                if job.other_turns_waiting:
                    doorbell.wake()  # another of its sessions' turns waits too: look again at once
                entry = live_cli.registry.take(job.session_id)
                assert _pool is not None
                _pool.submit(_run_claimed, job, entry)
            # After the claim: a turn the web rang for does not wait for this look.
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1
                _close_gone(me)
        except Exception:
            logger.warning("live session poller: a look for new turns failed", exc_info=True)
            connections.close_all()
            time.sleep(0.5)
    connections.close_all()


def _close_gone(me: str) -> None:
    """Close the live CLIs of sessions deleted meanwhile (a session's or its key's
    deletion) or no longer held by this worker."""
    from jobs.models import ClaudeSession

    # A hold this process no longer has a CLI for (its release failed): let the turn go elsewhere.
    stray = ClaudeSession.objects.filter(live_worker=me).exclude(
        pk__in=[e.session_id for e in live_cli.registry.all()]
    )
    stray_ids = list(stray.values_list("pk", flat=True))
    if stray_ids:
        live_cli.release(stray_ids)
    entries = [e for e in live_cli.registry.all() if not e.busy]
    if not entries:
        return
    kept = set(
        ClaudeSession.objects.filter(pk__in=[e.session_id for e in entries], live_worker=me).values_list(
            "pk", flat=True
        )
    )
    for entry in entries:
        if entry.session_id not in kept and entry.lease_until:
            live_cli.kill(entry)
            live_loop.submit(live_cli.close(entry, "its session was deleted or is held elsewhere"))


def _run_claimed(job, entry: live_cli.LiveCli | None = None) -> None:
    """Run a turn the poller claimed for ``entry`` (the session's live CLI it took), as the task
    loop runs a claimed job (``tasks.run_live_turn``, handed over by ``set_turn_runner``: the
    task module sits above this one)."""
    try:
        if _turn_runner is None:
            raise RuntimeError("no turn runner: jobs.tasks was not imported in this worker")
        _turn_runner(job)
    finally:
        # The turn never reached the CLI it took (deleted, failed to prepare): offer that CLI again.
        # Only that one: this turn's wind-down may overlap the session's next turn, which may have
        # started a CLI of its own meanwhile (a changed history, other settings). That one is busy
        # until its turn ends; offered idle while it starts, it has no pid yet, reads as dead, and
        # the idle closer closed it under its start (its turn then waited 60 s for the CLI's
        # answer to ``initialize`` and failed).
        if (
            entry is not None
            and live_cli.registry.get(job.session_id) is entry
            and entry.busy
            and not entry.closed
            and entry.last_job != str(job.pk)
        ):
            entry.busy = False
        # Kept for the next turn unless broken or old (settings: a worker's connections).
        close_old_connections()
        if _doorbell is not None:
            # A turn of the session sent meanwhile found its CLI busy: the poller looks again now.
            _doorbell.wake()


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

    if wait_for_turns and live_cli.registry.all():
        worker.request_stop("recycled")
        deadline = time.monotonic() + settings.SHUTDOWN_GRACE_SECONDS + settings.JOB_KILL_GRACE_SECONDS + 3
        while worker.state.busy and time.monotonic() < deadline:
            time.sleep(0.05)
    entries = live_cli.registry.all()
    if entries and live_loop._loop is not None and not live_loop.in_loop_thread():

        async def close_all() -> None:
            await asyncio.gather(
                *(live_cli.close(e, "the worker stops") for e in entries), return_exceptions=True
            )

        try:
            live_loop.run(close_all(), timeout)
        except Exception:
            logger.warning("live sessions: closing them at shutdown failed", exc_info=True)
    for entry in entries:
        live_cli.kill(entry)
    try:
        from jobs.models import ClaudeSession

        held = list(
            ClaudeSession.objects.filter(live_worker=live_cli.worker_me()).values_list("pk", flat=True)
        )
        live_cli.release(held)
    except Exception:
        logger.warning("live sessions: could not release this worker's sessions", exc_info=True)
