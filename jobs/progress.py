"""A job's events: written to the database first, then pushed to live readers.

The runner and the transcription pipeline report through ``JobProgress``; the
stored rows are the truth (readers resume from a sequence number), the push on
the channel layer only wakes readers up sooner.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import IntegrityError

from jobs.models import JobEvent

logger = logging.getLogger(__name__)


def job_group(job_id: uuid.UUID | str) -> str:
    return f"job-{job_id}"


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
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            await layer.group_send(job_group(self.job_id), {"type": "job.event", "seq": seq})
        except Exception:  # the push is an optimisation; readers poll the table anyway
            logger.warning("live push for job %s failed", self.job_id, exc_info=True)

    def _publish_sync(self, seq: int) -> None:
        async_to_sync(self._publish)(seq)
