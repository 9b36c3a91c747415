"""A running job's events written behind its CLI (``jobs.progress.EventWriter``): in the CLI's
order, several to an insert, all of them before the relay returns, and a deleted job still
stops the run."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import progress
from jobs.models import Job, JobEvent, JobStatus
from jobs.progress import EventWriter, JobGone, JobProgress
from jobs.services import job_create
from jobs.streaming import Ended, follow_job

pytestmark = pytest.mark.django_db(transaction=True)


async def _job() -> Job:
    # Not asyncio.to_thread: each test's loop has threads of its own, and a pooled connection
    # (scale-out) that a thread took is not given back when the thread ends.
    key, _ = await sync_to_async(api_key_create)(name="writer")
    job = await sync_to_async(job_create)(caller=Caller(api_key=key), prompt="hi", enqueue=False)
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


class _Layer:
    """A channel layer that records what is pushed; refuses what it is told to."""

    def __init__(self, refuse=lambda message: False) -> None:
        self.sent: list[dict] = []
        self.refuse = refuse

    async def group_send(self, group, message):
        if self.refuse(message):
            raise OverflowError("Integer value out of range")  # msgpack's, on a too big integer
        self.sent.append(message)


async def test_a_push_of_the_runners_events_carries_them(monkeypatch):
    layer = _Layer()
    monkeypatch.setattr(progress, "_layer", lambda: layer)
    job = await _job()
    writer = JobProgress(job.pk).writer()
    await writer.put("system", {"type": "system", "n": 0})
    await writer.flush()
    await writer.put("stream_event", {"n": 1})
    await writer.put("result", {"n": 2})
    await writer.flush()
    assert [m["events"] for m in layer.sent] == [
        [[0, "system", {"type": "system", "n": 0}]],
        [[1, "stream_event", {"n": 1}], [2, "result", {"n": 2}]],
    ]
    assert all(
        m["type"] == "job.event" and m["job"] == str(job.pk) and m["status_unchanged"] for m in layer.sent
    )


async def test_a_push_the_layer_cannot_carry_still_wakes_the_readers(monkeypatch):
    layer = _Layer(refuse=lambda message: "events" in message)
    monkeypatch.setattr(progress, "_layer", lambda: layer)
    job = await _job()
    writer = JobProgress(job.pk).writer()
    await writer.put("stream_event", {"n": 2**70})
    await writer.flush()
    assert layer.sent == [{"type": "job.event", "job": str(job.pk), "seq": 0, "status_unchanged": True}]


def test_only_small_batches_of_plain_json_are_pushed_with_their_events():
    def batch(*data):
        return [JobEvent(seq=n, type="stream_event", data=d) for n, d in enumerate(data)]

    assert progress.pushed_events(batch({"a": 1}, {"b": [1.5, None, "x"]})) == [
        [0, "stream_event", {"a": 1}],
        [1, "stream_event", {"b": [1.5, None, "x"]}],
    ]
    assert progress.pushed_events(batch(*[{}] * (progress.PUSH_EVENTS_MAX + 1))) is None
    assert progress.pushed_events(batch({"text": "x" * progress.PUSH_BYTES_MAX})) is None
    assert progress.pushed_events(batch({"when": object()})) is None


def _count_table_reads(monkeypatch) -> list[int]:
    from jobs import streaming

    reads: list[int] = []
    read = streaming.job_events

    def spy(*, job_id, offset, limit):
        reads.append(offset)
        return read(job_id=job_id, offset=offset, limit=limit)

    monkeypatch.setattr(streaming, "job_events", spy)
    return reads


async def _follow(job_id, seen: list) -> None:
    async for item in follow_job(job_id):
        seen.append(item)
        if isinstance(item, Ended):
            return


async def test_a_reader_takes_pushed_events_without_reading_the_table(settings, monkeypatch):
    settings.STREAM_POLL_MS = 600_000  # only the pushes can wake it within the test's time
    reads = _count_table_reads(monkeypatch)
    job = await _job()
    seen: list = []
    reader = asyncio.create_task(_follow(job.pk, seen))
    await asyncio.sleep(0.5)  # subscribed, its first read done
    writer = JobProgress(job.pk).writer()
    for n in range(20):
        await writer.put("stream_event", {"n": n})
        await writer.flush()  # one push each
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.COMPLETED)
    await progress.ajob_ended_push(job.pk)
    await asyncio.wait_for(reader, timeout=30)
    assert [i.data["n"] for i in seen[:-1]] == list(range(20))
    assert [i.seq for i in seen[:-1]] == list(range(20))
    assert isinstance(seen[-1], Ended) and seen[-1].status == JobStatus.COMPLETED
    # The first read, and the one after the end's push (which carries no events): none for the 20.
    assert reads == [0, 20]


async def test_a_reader_that_missed_a_push_reads_the_table(settings, monkeypatch):
    settings.STREAM_POLL_MS = 600_000
    reads = _count_table_reads(monkeypatch)
    job = await _job()
    seen: list = []
    reader = asyncio.create_task(_follow(job.pk, seen))
    await asyncio.sleep(0.5)
    # Three events stored with no push (as if their push was lost), then one pushed with its events.
    for n in range(3):
        await sync_to_async(JobProgress(job.pk, start_seq=n)._store)("stream_event", {"n": n})
    writer = JobProgress(job.pk, start_seq=3).writer()
    await writer.put("stream_event", {"n": 3})
    await writer.flush()
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.COMPLETED)
    await progress.ajob_ended_push(job.pk)
    await asyncio.wait_for(reader, timeout=30)
    assert [i.data["n"] for i in seen[:-1]] == [0, 1, 2, 3]
    assert reads[:2] == [0, 0], "the push of event 3 came after a gap: the table was read from 0"


async def test_a_reader_woken_by_rings_with_a_gap_between_them_reads_the_table(monkeypatch):
    """Two pushes that reach a reader at once are taken together only if nothing is missing
    between them (``streaming._wakeup``)."""
    from jobs.streaming import _wakeup

    job_id = (await _job()).pk

    def push(*seqs):
        return {
            "type": "job.event",
            "job": str(job_id),
            "seq": seqs[-1],
            "status_unchanged": True,
            "events": [[n, "stream_event", {"n": n}] for n in seqs],
        }

    assert _wakeup([push(0, 1), push(2)], job_id) == (
        False,
        [[n, "stream_event", {"n": n}] for n in range(3)],
    )
    assert _wakeup([push(0, 1), push(3)], job_id) == (False, None)  # 2 was lost: the table, no status
    assert _wakeup([push(0), {"type": "job.ended"}], job_id) == (True, None)
    assert _wakeup([push(0), None], job_id) == (True, None)  # a ring it could not verify
    assert _wakeup([], job_id) == (True, None)  # the poll
    assert _wakeup([{**push(0), "job": "another"}], job_id) == (True, None)


def test_a_ring_carries_a_push_signed_and_without_the_events_that_do_not_fit():
    from jobs.wakeup import PAYLOAD_DATA_MAX, payload_verified

    message = {"type": "job.event", "job": "j", "seq": 0, "status_unchanged": True}
    small = {**message, "events": [[0, "stream_event", {"text": "x"}]]}
    assert json.loads(payload_verified(progress._ring_payload(small))) == small
    big = {**message, "events": [[0, "stream_event", {"text": "x" * PAYLOAD_DATA_MAX}]]}
    assert json.loads(payload_verified(progress._ring_payload(big))) == message
    odd = {**message, "events": [[0, "stream_event", {"when": object()}]]}
    assert json.loads(payload_verified(progress._ring_payload(odd))) == message
