"""A running job's events written behind its CLI (``jobs.progress.EventWriter``): in the CLI's
order, several to an insert, all of them before the relay returns, and a deleted job still
stops the run."""

from __future__ import annotations

import asyncio

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import progress
from jobs.models import Job, JobEvent, JobStatus
from jobs.progress import EventWriter, JobGone, JobProgress
from jobs.services import job_create
from jobs.streaming import Ended, follow_job

pytestmark = pytest.mark.django_db(transaction=True)


async def _job() -> Job:
    key, _ = await asyncio.to_thread(api_key_create, name="writer")
    job = await asyncio.to_thread(job_create, caller=Caller(api_key=key), prompt="hi", enqueue=False)
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.RUNNING)
    return job


@pytest.fixture
def batches(monkeypatch) -> list[list[int]]:
    """The sequence numbers of each insert the writer makes (it still makes them)."""
    seen: list[list[int]] = []
    store = progress._store_many

    def spy(job_id, events):
        seen.append([e.seq for e in events])
        store(job_id, events)

    monkeypatch.setattr(progress, "_store_many", spy)
    return seen


async def test_events_put_while_one_is_written_go_in_one_insert_in_order(batches):
    job = await _job()
    writer = JobProgress(job.pk, start_seq=3).writer()
    assert await writer.put("stream_event", {"n": 0}) == 3
    await asyncio.sleep(0)  # its insert is under way
    for n in range(1, 10):
        assert await writer.put("stream_event", {"n": n}) == 3 + n
    await writer.flush()
    rows = [(e.seq, e.type, e.data["n"]) async for e in JobEvent.objects.filter(job=job).order_by("seq")]
    assert rows == [(3 + n, "stream_event", n) for n in range(10)]
    # The first is written at once; the nine that came meanwhile, together.
    assert batches == [[3], list(range(4, 13))]
    assert writer.progress.next_seq == 13


async def test_a_reader_gets_every_event_and_ends_after_the_final_status(settings):
    settings.STREAM_POLL_MS = 600_000  # only the pushes can wake it within the test's time
    job = await _job()
    seen = []

    async def read():
        async for item in follow_job(job.pk):
            seen.append(item)
            if isinstance(item, Ended):
                return

    reader = asyncio.create_task(read())
    writer = JobProgress(job.pk).writer()
    for n in range(25):
        await writer.put("stream_event", {"n": n})
        if n % 5 == 0:
            await asyncio.sleep(0.01)
    await writer.flush()
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.COMPLETED)
    await progress.ajob_ended_push(job.pk)
    await asyncio.wait_for(reader, timeout=30)
    assert [i.data["n"] for i in seen[:-1]] == list(range(25))
    assert isinstance(seen[-1], Ended) and seen[-1].status == JobStatus.COMPLETED
    # The sync push after the run (tasks._run) knows the loop pushed it already.
    assert str(job.pk) in progress._ended_pushed
    progress.job_ended_push(job.pk)
    assert str(job.pk) not in progress._ended_pushed


async def test_a_deleted_job_fails_the_next_put_or_the_flush():
    job = await _job()
    writer = JobProgress(job.pk).writer()
    await writer.put("system", {"type": "system"})
    await writer.flush()
    await Job.objects.filter(pk=job.pk).adelete()
    await writer.put("assistant", {"n": 1})
    with pytest.raises(JobGone):
        await writer.flush()
    with pytest.raises(JobGone):
        await writer.put("assistant", {"n": 2})


async def test_a_writer_far_behind_makes_the_cli_wait(monkeypatch, batches):
    monkeypatch.setattr(EventWriter, "MAX_PENDING", 4)
    job = await _job()
    writer = JobProgress(job.pk).writer()
    for n in range(12):
        await writer.put("stream_event", {"n": n})
        assert len(writer._pending) <= 4
    await writer.flush()
    assert await JobEvent.objects.filter(job=job).acount() == 12
    assert [seq for batch in batches for seq in batch] == list(range(12))
