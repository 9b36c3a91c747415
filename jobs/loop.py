"""One persistent asyncio event loop per worker process, on a daemon thread.

``asyncio.run`` per job closes its loop when the job ends, and with it every
subprocess the job's SDK client started. Jobs of compat sessions run here
instead (``runner.run_job``), so a session's live CLI (``jobs.live``) can
outlive the turn that started it and serve the next one; so do the
pre-started CLIs (``jobs.spares``), started here before their job exists,
and the jobs that take them over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync, SyncToAsync

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            # Thread-sensitive sync_to_async calls (the ORM) of every task on this loop go
            # to one thread of the loop's own, as asgiref does for a loop it runs itself,
            # rather than to its process-wide executor, which refuses a second caller
            # from a context that already uses it ("would deadlock").
            AsyncToSync.loop_thread_executors[loop] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="claudesvc-loop-sync"
            )
            _thread = threading.Thread(target=serve, name="claudesvc-loop", daemon=True)
            _thread.start()
            ready.wait(10)
            _loop = loop
        return _loop


def running() -> bool:
    """Whether this process started its loop (a worker that ran a session turn or a spare CLI)."""
    return _loop is not None and _thread is not None and _thread.is_alive()


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start ``coro`` on the loop as a task, in the caller's context (log context variables)."""
    loop = get_loop()
    ctx = contextvars.copy_context()
    # The task starts outside any sync_to_async call, whatever its caller was in.
    ctx.run(SyncToAsync.deadlock_context.set, False)
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        task = ctx.run(loop.create_task, coro)

        def done(t: asyncio.Task) -> None:
            if t.cancelled():
                result.cancel()
            elif t.exception() is not None:
                result.set_exception(t.exception())
            else:
                result.set_result(t.result())

        task.add_done_callback(done)

    loop.call_soon_threadsafe(start)
    return result


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the loop and wait for it (from any thread but the loop's)."""
    if in_loop_thread():
        raise RuntimeError("jobs.loop.run called on the loop's own thread")
    return submit(coro).result(timeout)
