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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from jobs.models import FINAL_STATUSES, Job, JobEvent
from jobs.progress import job_bells, job_group
from jobs.selectors import job_events
from jobs.wakeup import bell_open

# Events per read; a reader that got this many reads again at once.
READ_LIMIT = 500


@dataclass(frozen=True)
class Idle:
    """Nothing new for a while: a chance to send a keep-alive."""


@dataclass(frozen=True)
class Ended:
    """The job reached ``status`` (None: it was deleted) and every event was delivered."""

    status: str | None


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
    if bell:

        def on_ring() -> None:
            bell.drain()
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
                        message = finished.result()  # a broken layer fails the stream, as before
                        check_status = not (
                            message.get("type") == "job.event" and message.get("status_unchanged")
                        )
                        if message.get("type") == "job.event":
                            pushed = message.get("events")
                elif bell:
                    # Set since the last read already (a ring that came meanwhile): no wait.
                    await asyncio.wait_for(rang.wait(), timeout=poll)
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
