"""The cold path's wake-ups (jobs/wakeup.py and its users): a submit rings the
broker's pusher, an event or a job's end rings its readers, a reader wakes on
a ring without waiting for its poll, and a job's end does not wait for zombies
or for its folder's deletion. Mechanisms only: the timings are bench/latency.py's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import tasks, wakeup
from jobs.models import Job, JobEvent, JobStatus
from jobs.progress import JobProgress, job_bells, job_ended_push
from jobs.sandbox import group_running
from jobs.services import job_create
from jobs.streaming import Ended, follow_job
from jobs.workspace import (
    TRASH_PREFIX,
    job_paths,
    workspace_finished,
    workspace_prepare,
    workspace_trash_empty,
)

pytestmark = pytest.mark.skipif(not wakeup.SUPPORTED, reason="bells need Linux's abstract sockets")


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "bells"


def test_a_ring_wakes_every_bell_of_its_folder(folder):
    first, second = wakeup.bell_open(folder), wakeup.bell_open(folder)
    try:
        assert not first.wait(0)
        assert wakeup.ring(folder) == 2
        assert first.wait(5) and second.wait(5)
        assert not first.wait(0)  # the ring was consumed
    finally:
        first.close()
        second.close()
    assert not folder.exists()  # the last bell tidies its folder up


def test_a_ring_carries_its_payload_in_order_and_a_bare_ring_stays_bare(folder):
    bell = wakeup.bell_open(folder)
    try:
        assert wakeup.ring(folder, wakeup.payload_signed(b"one")) == 1
        assert wakeup.ring(folder) == 1
        assert wakeup.ring(folder, wakeup.payload_signed(b"two")) == 1
        received = bell.receive()
        assert [wakeup.payload_verified(p) for p in received] == [b"one", None, b"two"]
        assert bell.receive() == []
    finally:
        bell.close()


def test_a_payload_too_big_for_a_ring_rings_without_it(folder):
    bell = wakeup.bell_open(folder)
    try:
        assert wakeup.ring(folder, wakeup.payload_signed(b"x" * wakeup.PAYLOAD_MAX)) == 1
        assert bell.receive() == [b"!"]
    finally:
        bell.close()


def test_only_this_deployments_signature_is_verified(settings):
    signed = wakeup.payload_signed(b'{"type":"job.event"}')
    assert wakeup.payload_verified(signed) == b'{"type":"job.event"}'
    assert wakeup.payload_verified(b'{"type":"job.event"}') is None  # unsigned
    assert wakeup.payload_verified(signed[:-1] + b"!") is None  # changed after signing
    assert wakeup.payload_verified(signed[:10]) is None  # cut short
    settings.SECRET_KEY = "another deployment's key"
    assert wakeup.payload_verified(signed) is None


def test_ringing_a_folder_nobody_waits_on_is_a_no_op(folder):
    assert wakeup.ring(folder) == 0


def test_a_payload_to_make_is_made_only_for_a_bell_that_waits(folder):
    made = []

    def payload() -> bytes:
        made.append(1)
        return wakeup.payload_signed(b"news")

    assert wakeup.ring(folder, payload) == 0 and made == []
    bell = wakeup.bell_open(folder)
    try:
        assert wakeup.ring(folder, payload) == 1 and made == [1]
        assert [wakeup.payload_verified(p) for p in bell.receive()] == [b"news"]
    finally:
        bell.close()


def test_a_bell_whose_process_is_gone_is_forgotten(folder):
    bell = wakeup.bell_open(folder)
    bell.sock.close()  # as if its process was killed: the registration stays
    assert (folder / bell.name).exists()
    assert wakeup.ring(folder) == 0
    assert not (folder / bell.name).exists()


@pytest.mark.django_db
def test_a_submit_rings_the_broker_pusher(django_capture_on_commit_callbacks, monkeypatch):
    rung = []
    monkeypatch.setattr(wakeup, "ring", lambda folder: rung.append(folder) or 1)
    broker = wakeup.BrokerBell(list_key="test-wakeup")
    monkeypatch.setattr("django_q.tasks.get_broker", lambda *a, **k: broker)
    key, _ = api_key_create(name="wake")
    with django_capture_on_commit_callbacks(execute=True):
        job_create(caller=Caller(api_key=key), prompt="hi")
    assert rung == [wakeup.broker_folder()]
    broker.delete_queue()


@pytest.mark.django_db(transaction=True)
def test_the_pusher_wakes_on_a_ring_and_takes_the_message(monkeypatch):
    monkeypatch.setattr("django_q.conf.Conf.POLL", 600)  # a wait for the poll would time the test out
    pusher = wakeup.BrokerBell(list_key="test-wakeup-2")
    bell = pusher._own_bell()  # bound before the enqueue, as a running pusher's is
    waiting, returned = threading.Event(), []
    bell_wait = bell.wait

    def wait(timeout):
        waiting.set()
        return bell_wait(timeout)

    monkeypatch.setattr(bell, "wait", wait)
    woke = threading.Thread(target=lambda: returned.append(pusher.dequeue()))
    woke.start()
    # The enqueue only once the pusher found nothing and waits on its bell (a busy machine
    # may start the thread after the enqueue, and it would then find the message at once).
    assert waiting.wait(timeout=30)
    wakeup.BrokerBell(list_key="test-wakeup-2").enqueue("payload")
    woke.join(timeout=60)
    try:
        assert not woke.is_alive() and returned == [None], "woken by the ring, long before its poll"
        assert [payload for _, payload in pusher.dequeue()] == ["payload"]
    finally:
        pusher.delete_queue()
        pusher._bell.close()


def test_the_embedded_setup_uses_the_ringing_broker():
    if settings.REDIS_URL:
        assert "broker_class" not in settings.Q_CLUSTER
    else:
        assert settings.Q_CLUSTER["broker_class"] == "jobs.wakeup.BrokerBell"


@pytest.mark.django_db
def test_an_event_and_a_jobs_end_ring_its_readers(monkeypatch):
    key, _ = api_key_create(name="ev")
    job = job_create(caller=Caller(api_key=key), prompt="hi", enqueue=False)
    bell = wakeup.bell_open(job_bells(job.pk))
    try:
        JobProgress(job.pk).emit("system", {"type": "system"})
        assert bell.wait(5)
        job_ended_push(job.pk)
        assert bell.wait(5)
    finally:
        bell.close()


@pytest.mark.django_db
def test_a_run_ends_with_a_push_to_its_readers(monkeypatch):
    key, _ = api_key_create(name="end")
    job = job_create(caller=Caller(api_key=key), prompt="hi", enqueue=False)
    pushed = []
    monkeypatch.setattr(tasks, "_ended_push", pushed.append)

    class Instant:
        def execute(self, job_id):
            Job.objects.filter(pk=job_id).update(status=JobStatus.COMPLETED)

    monkeypatch.setattr(tasks, "job_kind", lambda kind: Instant())
    assert tasks.run_next_job() == str(job.pk)
    assert pushed == [job.pk]


@pytest.mark.django_db
def test_a_session_turns_end_is_pushed_after_its_session_recorded_it(monkeypatch):
    """A client that sees a turn end may send the next turn at once: the session must already
    know the conversation the turn left, or the next turn starts afresh on a cold CLI."""
    from jobs.sessions import session_for_call

    key, _ = api_key_create(name="turn-end")
    caller = Caller(api_key=key)
    session = session_for_call(caller=caller, external_id="order", model="haiku")
    job = job_create(caller=caller, prompt="hi", session=session, enqueue=False)
    order = []
    monkeypatch.setattr(tasks, "_ended_push", lambda job_id: order.append("pushed"))
    monkeypatch.setattr(tasks, "session_job_start", lambda job: None)

    def finished(job):
        order.append("recorded")
        raise RuntimeError("the session update failed")

    monkeypatch.setattr(tasks, "session_job_finished_after_run", finished)

    class Instant:
        def execute(self, job_id):
            Job.objects.filter(pk=job_id).update(status=JobStatus.COMPLETED)

    monkeypatch.setattr(tasks, "job_kind", lambda kind: Instant())
    with pytest.raises(RuntimeError):
        tasks._run(Job.objects.get(pk=job.pk))
    assert order == ["recorded", "pushed"], "pushed after the session's update, even a failed one"


def test_a_turns_end_is_pushed_from_the_workers_loop_when_it_runs(monkeypatch):
    """Where the worker's persistent loop runs (a session's turns run on it), the end goes out on
    it, on the channel layer connection it keeps, not on a loop and connection made for one push;
    from the loop's own thread, where that cannot wait, the plain push."""
    from jobs import loop, progress

    threads = []

    async def push(job_id, message):
        threads.append((threading.current_thread().name, job_id, message["type"]))

    monkeypatch.setattr(progress, "_push", push)
    loop.get_loop()
    assert loop.running()
    tasks._ended_push("job-a")
    assert threads == [("claudesvc-loop", "job-a", "job.ended")]

    # An end the runner pushed already (``ajob_ended_push``) is not pushed twice.
    progress._ended_pushed.add("job-b")
    tasks._ended_push("job-b")
    assert [t[1] for t in threads] == ["job-a"] and "job-b" not in progress._ended_pushed

    plain = []
    monkeypatch.setattr(tasks, "job_ended_push", plain.append)

    async def from_the_loop():
        tasks._ended_push("job-c")

    loop.run(from_the_loop())
    assert plain == ["job-c"]


@pytest.mark.django_db(transaction=True)
async def test_a_reader_wakes_on_a_push_not_at_its_next_poll(settings):
    settings.STREAM_POLL_MS = 600_000  # only a push can wake it within the test's time
    key, _ = await asyncio.to_thread(api_key_create, name="follow")
    job = await asyncio.to_thread(job_create, caller=Caller(api_key=key), prompt="hi", enqueue=False)
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.RUNNING)
    seen = []

    async def read():
        async for item in follow_job(job.pk):
            seen.append(item)
            if isinstance(item, Ended):
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # subscribed and waiting

    def work():
        JobProgress(job.pk).emit("system", {"type": "system"})
        Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED)
        job_ended_push(job.pk)

    await asyncio.to_thread(work)
    await asyncio.wait_for(reader, timeout=60)
    assert [type(i).__name__ for i in seen] == ["JobEvent", "Ended"]
    assert isinstance(seen[0], JobEvent) and seen[-1].status == JobStatus.COMPLETED


def test_a_group_of_zombies_counts_as_ended():
    proc = subprocess.Popen(["true"], start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not yet waited for: a zombie
        state = Path(f"/proc/{proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        if state == b"Z":
            break
        time.sleep(0.01)
    os.killpg(proc.pid, 0)  # what the runner used to ask: "alive"
    assert not group_running(proc.pid)
    proc.wait()
    assert not group_running(proc.pid)


def test_a_running_group_counts_as_running():
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert group_running(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.django_db
def test_a_finished_jobs_folder_is_gone_at_once_and_deleted_behind(settings):
    settings.JOB_KEEP_WORKDIR_SECONDS = 0
    key, _ = api_key_create(name="ws")
    job = job_create(caller=Caller(api_key=key), prompt="hi", enqueue=False)
    paths = workspace_prepare(job.pk)
    (paths.home / ".claude" / "notes.txt").write_text("x")
    workspace_finished(job.pk)
    assert not job_paths(job.pk).root.exists()
    for thread in threading.enumerate():
        if thread.name == "claudesvc-workspace-removal":
            thread.join(timeout=30)
    assert not [p for p in Path(settings.JOBS_ROOT).iterdir() if p.name.startswith(TRASH_PREFIX)]


def test_a_workers_start_empties_the_trash_left_behind(settings, tmp_path):
    settings.JOBS_ROOT = tmp_path / "jobs"
    (tmp_path / "jobs" / f"{TRASH_PREFIX}abc" / "home").mkdir(parents=True)
    (tmp_path / "jobs" / "a-job").mkdir()
    assert workspace_trash_empty() == 1
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["a-job"]
