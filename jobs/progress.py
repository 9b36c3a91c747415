"""A job's events: written to the database first, then pushed to live readers.

The runner and the transcription pipeline report through ``JobProgress``; the
stored rows are the truth (readers resume from a sequence number), the push
only wakes readers up sooner: on the channel layer where it reaches other
processes (Redis), else by ringing the job's bells (``jobs.wakeup``: readers of
the embedded setup on this machine). ``job_ended_push`` does the same once the
job's final status is written, so that a reader ends without waiting for its
next poll.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import IntegrityError

from jobs.models import JobEvent
from jobs.wakeup import bells_root, ring

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


async def _push(job_id: uuid.UUID | str, message: dict[str, Any]) -> None:
    ring(job_bells(job_id))  # nobody waits: one failed listdir
    layer = _layer()
    if layer is None:
        return
    try:
        await layer.group_send(job_group(job_id), message)
    except Exception:  # the push is an optimisation; readers poll the table anyway
        logger.warning("live push for job %s failed", job_id, exc_info=True)


def _push_sync(job_id: uuid.UUID | str, message: dict[str, Any]) -> None:
    if _layer() is None:
        # Only bells to ring: no event loop to start for that (async_to_sync makes one per call).
        ring(job_bells(job_id))
        return
    async_to_sync(_push)(job_id, message)


def job_ended_push(job_id: uuid.UUID | str) -> None:
    """Wake the job's readers after its final status was written (they end then)."""
    _push_sync(job_id, {"type": "job.ended"})


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
