"""Following a job's events as they are written, for every streaming face
(Server-Sent Events, the compat streams, WebSocket).

Rows are read from the database by sequence number, so a reader that starts
late or reconnects misses nothing. What wakes a reader when a row lands (or the
job ends): a push on the channel layer (Redis) in the scale-out deployment; in
the embedded one, where the in-memory layer cannot reach the web process from a
worker, a bell of the job's (``jobs.wakeup``) that ``jobs.progress`` rings.
Without either, and as the fallback, it re-checks every ``STREAM_POLL_MS``.
A push of the runner's events carries them (``progress.pushed_events``, when
small enough): a reader that has every event before them takes them from the
push instead of the table; after a gap (a push it missed), it reads the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from cryptography.fernet import InvalidToken
from django.conf import settings

from jobs.models import FINAL_STATUSES, Job, JobEvent
from jobs.progress import job_bells, job_group
from jobs.selectors import job_events
from jobs.wakeup import bell_open, payload_verified

logger = logging.getLogger(__name__)

# Events per read; a reader that got this many reads again at once.
READ_LIMIT = 500


@dataclass(frozen=True)
class Idle:
    """Nothing new for a while: a chance to send a keep-alive."""


@dataclass(frozen=True)
class Ended:
    """The job reached ``status`` (None: it was deleted) and every event was delivered."""

    status: str | None


def _wakeup(messages: list[dict | None], job_id: uuid.UUID) -> tuple[bool, list | None]:
    """What the pushes that woke a reader tell, together: whether the status may have changed,
    and the events they carry (``[seq, type, data]`` each, in order) if they may be used.

    No message (the poll's timeout), or one that is not a status-unchanged push of this job's
    events (an end, a bare ring, one the reader could not verify: None), and the reader looks
    at everything. The events are taken only if every message carried its own, one after the
    other: a push lost between two of them leaves a gap, and the reader reads the table.
    """
    if not messages:
        return True, None
    job_key = str(job_id)
    events: list | None = []
    for message in messages:
        if (
            not message
            or message.get("type") != "job.event"
            or message.get("job") != job_key
            or not message.get("status_unchanged")
        ):
            return True, None
        carried = message.get("events")
        if events is None or not carried or (events and carried[0][0] != events[-1][0] + 1):
            events = None
        else:
            events.extend(carried)
    return False, events or None


def _received(finished: asyncio.Future, job_id: uuid.UUID) -> tuple[bool, list | None]:
    """``_wakeup`` for a push received on the channel layer.

    Any client of the Redis server can publish on a job's channel (a CLI shares the
    host's network: README, security model). The layer's messages are encrypted and
    authenticated (``symmetric_encryption_keys``), so one that does not decrypt is
    nobody's: it only wakes the reader. A genuine message of another job, replayed on
    this one's channel, names that job: its events are not taken either.
    """
    try:
        message = finished.result()  # a broken layer fails the stream, as before
    except InvalidToken:
        _undecryptable(job_id)
        return True, None
    return _wakeup([message], job_id)


# Pushes that did not decrypt, counted between two log lines: whoever sends them could send many.
_ignored = {"count": 0, "logged_at": float("-inf")}


def _undecryptable(job_id: uuid.UUID) -> None:
    _ignored["count"] += 1
    now = time.monotonic()
    if now - _ignored["logged_at"] >= 60:
        logger.warning(
            "%d push(es) on the channel layer did not decrypt and were ignored in the last minute "
            "(a forged message, or a process with another DJANGO_SECRET_KEY); the latest for job %s",
            _ignored["count"],
            job_id,
        )
        _ignored["count"], _ignored["logged_at"] = 0, now


def _rung(payload: bytes) -> dict | None:
    """The message a ring of the job's bell carried (``progress._ring_payload``), or None: a
    bare ring, or a payload without this deployment's signature (any process of the host can
    send to a bell)."""
    data = payload_verified(payload)
    if data is None:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def follow_job(job_id: uuid.UUID, *, offset: int = 0) -> AsyncIterator[JobEvent | Idle | Ended]:
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        layer = None  # in-process only: no worker's push reaches it
    channel = await layer.new_channel() if layer else None
    if channel:
        await layer.group_add(job_group(job_id), channel)
    bell = None if channel else bell_open(job_bells(job_id))
    rang = asyncio.Event()
    loop = asyncio.get_running_loop()
    # What the bell's rings carried since the reader last looked.
    inbox: list[bytes] = []
    if bell:

        def on_ring() -> None:
            inbox.extend(bell.receive())
            rang.set()

        loop.add_reader(bell.fileno(), on_ring)
    poll = settings.STREAM_POLL_MS / 1000
    keepalive = settings.STREAM_KEEPALIVE_SECONDS
    last_sent = time.monotonic()
    next_seq = offset
    receiving: asyncio.Future | None = None
    # Whether this wake-up may come from a status change: not when the push says that only events
    # came (a running job's relay, ``progress.EventWriter``).
    check_status = True
    status = None
    # The events a push carried (``progress.pushed_events``): [seq, type, data] each.
    pushed: list | None = None
    try:
        while True:
            # The status first: the worker writes a job's final events before its final
            # status, so a read of the events after a final status has them all. And a
            # status that changes after this read rings (pushes) after it, so the wait
            # below returns at once: no wake-up is lost, and one wake-up costs these two reads
            # (a push that says the status did not change, the second alone; one that also
            # carries every event from the next one on, none).
            if check_status:
                status = await Job.objects.filter(pk=job_id).values_list("status", flat=True).afirst()
            if pushed and pushed[0][0] <= next_seq:
                events = [
                    JobEvent(job_id=job_id, seq=seq, type=type_, data=data)
                    for seq, type_, data in pushed
                    if seq >= next_seq
                ]
            else:
                # Nothing pushed, or a gap before what was (a push this reader missed): the table.
                events = await sync_to_async(job_events)(job_id=job_id, offset=next_seq, limit=READ_LIMIT)
            pushed = None
            for event in events:
                next_seq = event.seq + 1
                yield event
            if len(events) == READ_LIMIT:
                last_sent = time.monotonic()
                continue  # more are waiting
            if check_status and (status is None or status in FINAL_STATUSES):
                yield Ended(status)
                return
            if events:
                last_sent = time.monotonic()
            try:
                if channel:
                    # The receive stays pending across polls rather than being
                    # cancelled by a timeout: channels-redis' pub/sub layer
                    # unsubscribes a channel whose receive() is cancelled.
                    if receiving is None:
                        receiving = asyncio.ensure_future(layer.receive(channel))
                    check_status = True
                    done, _ = await asyncio.wait({receiving}, timeout=poll)
                    if done:
                        receiving, finished = None, receiving
                        check_status, pushed = _received(finished, job_id)
                elif bell:
                    # Set since the last read already (a ring that came meanwhile): no wait.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(rang.wait(), timeout=poll)
                    # No await from here to rang.clear() below: no ring slips between them.
                    received, inbox[:] = inbox[:], []
                    check_status, pushed = _wakeup([_rung(p) for p in received], job_id)
                else:
                    await asyncio.sleep(poll)
            except TimeoutError:
                pass
            rang.clear()
            if time.monotonic() - last_sent >= keepalive:
                last_sent = time.monotonic()
                yield Idle()
    finally:
        if receiving is not None:
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving
        if bell:
            loop.remove_reader(bell.fileno())
            bell.close()
        if channel:
            await layer.group_discard(job_group(job_id), channel)
