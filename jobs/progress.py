"""A job's events: written to the database first, then pushed to live readers.

The runner and the transcription pipeline report through ``JobProgress``; the
stored rows are the truth (readers resume from a sequence number), the push
only wakes readers up sooner: on the channel layer where it reaches other
processes (Redis), else by ringing the job's bells (``jobs.wakeup``: readers of
the embedded setup on this machine). Either way a push of the runner's events
carries them when small enough (``pushed_events``; a ring signs them), so that
a reader that has every event before them need not read the table.
``job_ended_push`` does the same once the job's final status is written, so
that a reader ends without waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import IntegrityError

from jobs.models import JobEvent
from jobs.wakeup import PAYLOAD_DATA_MAX, bells_root, payload_signed, ring

logger = logging.getLogger(__name__)


def job_group(job_id: uuid.UUID | str) -> str:
    return f"job-{job_id}"


def job_bells(job_id: uuid.UUID | str) -> Path:
    """Where the embedded setup's readers of a job register their bells."""
    return bells_root() / "jobs" / str(job_id)


def _layer():
    """The channel layer, if it reaches readers in other processes (Redis); else None."""
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None  # an in-memory layer never reaches a reader in the web process
    return layer


def _ring_payload(message: dict[str, Any]) -> bytes:
    """``message`` as a signed ring's payload (JSON), without its events if they do not fit."""
    try:
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        data = None
    if data is None or len(data) > PAYLOAD_DATA_MAX:
        if "events" not in message:
            return b""
        return _ring_payload({k: v for k, v in message.items() if k != "events"})
    return payload_signed(data)


def _with_events(message: dict[str, Any], batch: list[JobEvent] | None) -> dict[str, Any]:
    """``message`` carrying the events of ``batch`` if they may be pushed (``pushed_events``)."""
    events = pushed_events(batch) if batch else None
    return message if events is None else {**message, "events": events}


async def _push(
    job_id: uuid.UUID | str, message: dict[str, Any], batch: list[JobEvent] | None = None
) -> None:
    """Wake the job's readers with ``message``, carrying the events of ``batch`` if it fits."""
    layer = _layer()
    if layer is None:
        # Nobody waits: one failed listdir, and no payload built.
        ring(job_bells(job_id), lambda: _ring_payload(_with_events(message, batch)))
        return
    ring(job_bells(job_id))
    message = _with_events(message, batch)
    try:
        await layer.group_send(job_group(job_id), message)
    except Exception:  # the push is an optimisation; readers poll the table anyway
        if "events" in message:
            # What the layer could not carry (an integer msgpack cannot hold): the wake-up alone.
            await _push(job_id, {k: v for k, v in message.items() if k != "events"})
            return
        logger.warning("live push for job %s failed", job_id, exc_info=True)


def _push_sync(job_id: uuid.UUID | str, message: dict[str, Any]) -> None:
    if _layer() is None:
        # Only bells to ring: no event loop to start for that (async_to_sync makes one per call).
        ring(job_bells(job_id), lambda: _ring_payload(message))
        return
    async_to_sync(_push)(job_id, message)


# Jobs whose end the runner pushed from its own loop (``ajob_ended_push``): the sync push after
# the run (``tasks._run``, for every kind of job) need not push it again.
_ended_pushed: set[str] = set()


def _end_pushed_already(job_id: uuid.UUID | str) -> bool:
    if str(job_id) in _ended_pushed:
        _ended_pushed.discard(str(job_id))
        return True
    return False


def job_ended_push(job_id: uuid.UUID | str) -> None:
    """Wake the job's readers after its final status was written (they end then)."""
    if not _end_pushed_already(job_id):
        _push_sync(job_id, {"type": "job.ended"})


async def ajob_ended_push_after_run(job_id: uuid.UUID | str) -> None:
    """``job_ended_push`` on a loop that runs on: its channel layer connection stays open for
    the next push (``async_to_sync`` would start a loop, and connect, for one message)."""
    if not _end_pushed_already(job_id):
        await _push(job_id, {"type": "job.ended"})


async def ajob_ended_push(job_id: uuid.UUID | str) -> None:
    """``job_ended_push`` from a running loop: on its channel layer connection, at once."""
    await _push(job_id, {"type": "job.ended"})
    if len(_ended_pushed) > 1000:  # a run not followed by ``job_ended_push`` (tests): bounded
        _ended_pushed.clear()
    _ended_pushed.add(str(job_id))


class JobGone(Exception):
    """The job's row was deleted while it ran."""


class JobProgress:
    """Appends ordered events to one job. One writer per job: the worker running it."""

    def __init__(self, job_id: uuid.UUID | str, *, start_seq: int = 0) -> None:
        self.job_id = job_id
        self.next_seq = start_seq

    def _store(self, type_: str, data: dict[str, Any]) -> int:
        seq = self.next_seq
        try:
            JobEvent.objects.create(job_id=self.job_id, seq=seq, type=type_[:40], data=data)
        except IntegrityError as exc:
            # The foreign key fails once the job is deleted (SQLite/PostgreSQL).
            raise JobGone(str(self.job_id)) from exc
        self.next_seq += 1
        return seq

    def emit(self, type_: str, data: dict[str, Any]) -> int:
        seq = self._store(type_, data)
        self._publish_sync(seq)
        return seq

    async def aemit(self, type_: str, data: dict[str, Any]) -> int:
        seq = await sync_to_async(self._store, thread_sensitive=True)(type_, data)
        await self._publish(seq)
        return seq

    async def _publish(self, seq: int) -> None:
        await _push(self.job_id, {"type": "job.event", "seq": seq})

    def _publish_sync(self, seq: int) -> None:
        _push_sync(self.job_id, {"type": "job.event", "seq": seq})

    def writer(self) -> EventWriter:
        return EventWriter(self)


class EventWriter:
    """A job's events written behind the CLI that produces them, in order.

    ``JobProgress.aemit`` makes its caller wait for the row and the push: one
    database round trip and one push per event, while the CLI's next messages
    wait in the pipe. The runner's relay puts its events here instead and goes
    on reading the CLI; one task writes what has come meanwhile as one insert
    and wakes the readers once. Sequence numbers are given at ``put``, so the
    order is the CLI's; the relay ``flush``es before the job's final status is
    written (a reader that sees it finished has all of its events).

    A write that fails (the job deleted: ``JobGone``; the database gone) fails
    the next ``put`` or the ``flush``, as ``aemit`` would have. ``MAX_PENDING``
    bounds what waits: a CLI faster than the database waits for it.
    """

    MAX_PENDING = 500

    def __init__(self, progress: JobProgress) -> None:
        self.progress = progress
        self._pending: list[JobEvent] = []
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None

    async def put(self, type_: str, data: dict[str, Any]) -> int:
        if self._error is not None:
            raise self._error
        if len(self._pending) >= self.MAX_PENDING:
            await self.flush()
        seq = self.progress.next_seq
        self.progress.next_seq += 1
        self._pending.append(JobEvent(job_id=self.progress.job_id, seq=seq, type=type_[:40], data=data))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return seq

    async def flush(self) -> None:
        """Wait until every event put so far is written and pushed."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        if self._error is not None:
            raise self._error

    async def _drain(self) -> None:
        while self._pending and self._error is None:
            batch, self._pending = self._pending, []
            try:
                await sync_to_async(_store_many, thread_sensitive=True)(self.progress.job_id, batch)
            except BaseException as exc:
                self._error = exc
                self._pending.clear()
                return
            # The relay's events come while the job runs: its status changes only at its end,
            # which is pushed on its own (``job.ended``), so a reader woken by this reads no status.
            message: dict[str, Any] = {
                "type": "job.event",
                "job": str(self.progress.job_id),  # a reader takes the events of its own job only
                "seq": batch[-1].seq,
                "status_unchanged": True,
            }
            await _push(self.progress.job_id, message, batch)


# A push carries its events (``pushed_events``) up to these bounds; a bigger batch is pushed
# without them and its readers read it from the table.
PUSH_EVENTS_MAX = 200
PUSH_BYTES_MAX = 64 * 1024


def pushed_events(batch: list[JobEvent]) -> list[list[Any]] | None:
    """``[seq, type, data]`` of each stored event, for a push that spares its readers the
    table read; None if the batch is too big to send through the channel layer."""
    if len(batch) > PUSH_EVENTS_MAX:
        return None
    size = 0
    for event in batch:
        try:
            size += len(json.dumps(event.data, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError):
            return None  # not plain JSON: its readers read what the table made of it
        if size > PUSH_BYTES_MAX:
            return None
    return [[event.seq, event.type, event.data] for event in batch]


def _store_many(job_id: uuid.UUID | str, events: list[JobEvent]) -> None:
    try:
        JobEvent.objects.bulk_create(events)
    except IntegrityError as exc:
        # The foreign key fails once the job is deleted (SQLite/PostgreSQL).
        raise JobGone(str(job_id)) from exc
