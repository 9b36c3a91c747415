"""The jobs table is the queue: wake-ups, the worker loop, the sweep, the graceful stop, the reaper."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from claudesvc.auth import Caller
from jobs import runner, tasks, worker
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.reaper import job_reap_stale
from jobs.sandbox import group_running
from jobs.services import job_create, job_transition

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def caller(owner_key) -> Caller:
    return Caller(api_key=owner_key.row)


@pytest.fixture
def wakeups(monkeypatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: sent.append(1))
    # The broker's own backlog is not under test here (on Redis it may hold wake-ups
    # other tests sent, which no cluster takes while unit tests run).
    monkeypatch.setattr("jobs.worker._wake_ups_waiting", lambda: False)
    return sent


@pytest.fixture(autouse=True)
def _fresh_worker_state():
    worker.state.stop_requested_at = None
    worker.state.busy = 0
    yield
    worker.state.stop_requested_at = None
    worker.state.busy = 0


def completing_runner(ran: list):
    def fake_run(job_id):
        ran.append(Job.objects.get(pk=job_id).prompt)
        job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED)

    return fake_run


def test_one_wake_up_runs_every_pending_job_best_first(caller, wakeups, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr("jobs.runner.run_job", completing_runner(ran))
    for name, priority in [("low", 0), ("high", 9), ("low2", 0), ("mid", 5)]:
        job_create(caller=caller, prompt=name, priority=priority)
    assert tasks.run_pending_jobs() == 4
    assert ran == ["high", "mid", "low", "low2"]
    # A duplicated or late wake-up finds nothing and does nothing.
    assert tasks.run_pending_jobs() == 0


def test_a_lost_wake_up_is_made_good_by_an_idle_workers_sweep(caller, wakeups):
    # Submitted, but its message never reached a worker (a restart, a Redis flush).
    job_create(caller=caller, prompt="waiting", enqueue=False)
    assert worker.sweep(idle=False) is False, "a busy worker claims by itself when its job ends"
    assert worker.sweep(idle=True) is True and wakeups == [1]


def test_the_sweep_sends_no_second_wake_up_while_one_waits_in_the_broker(caller, wakeups, monkeypatch):
    job_create(caller=caller, prompt="waiting", enqueue=False)
    monkeypatch.setattr("jobs.worker._wake_ups_waiting", lambda: True)
    assert worker.sweep(idle=True) is False and wakeups == []


def test_the_sweep_stays_quiet_when_nothing_can_start(caller, wakeups):
    assert worker.sweep(idle=True) is False and wakeups == []


def test_a_stopping_worker_claims_nothing(caller, wakeups, monkeypatch):
    monkeypatch.setattr("jobs.runner.run_job", lambda job_id: pytest.fail("must not run"))
    job = job_create(caller=caller, prompt="later")
    worker.request_stop("SIGTERM")
    assert tasks.run_pending_jobs() == 0
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_two_workers_racing_never_run_a_job_twice(caller, wakeups, monkeypatch):
    ran: list[str] = []
    lock = threading.Lock()

    def fake_run(job_id):
        with lock:
            ran.append(str(job_id))
        time.sleep(0.01)
        job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED)

    monkeypatch.setattr("jobs.runner.run_job", fake_run)
    jobs = [job_create(caller=caller, prompt=f"job {i}") for i in range(12)]

    def loop():
        try:
            tasks.run_pending_jobs()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(ran) == sorted(str(j.pk) for j in jobs)
    assert Job.objects.filter(status=JobStatus.COMPLETED).count() == 12


def test_a_job_whose_worker_process_died_here_is_failed_without_waiting_for_staleness(caller, wakeups):
    job_create(caller=caller, prompt="orphan", enqueue=False)
    job = job_claim_next(worker=f"{os.uname().nodename}:999999")
    # The dead worker's last beat: older than two beats, far from JOB_STALE_SECONDS.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=12))
    assert job_reap_stale() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "died" in job.error_message
    # Readers waiting on the stream get the reason as the last event.
    assert job.events.order_by("-seq").first().data["message"] == job.error_message


def test_a_live_workers_job_is_left_alone(caller, wakeups):
    job_create(caller=caller, prompt="alive", enqueue=False)
    job = job_claim_next()  # this process: alive
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=12))
    assert job_reap_stale() == 0


def test_a_stale_job_elsewhere_is_failed_after_job_stale_seconds(caller, wakeups, settings):
    job_create(caller=caller, prompt="far away", enqueue=False)
    job = job_claim_next(worker="another-host:1")
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS - 5)
    )
    assert job_reap_stale() == 0
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 1)
    )
    assert job_reap_stale() == 1
    job.refresh_from_db()
    assert "stopped responding" in job.error_message


# -- the graceful stop, with the real CLI --------------------------------------------------------


def _run_in_thread(job_id) -> threading.Thread:
    def work():
        try:
            runner.run_job(job_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.usefixtures("upstream")
def test_a_job_stopped_by_shutdown_before_the_model_answered_goes_back_to_pending(caller, settings):
    settings.SHUTDOWN_GRACE_SECONDS = 0
    job_create(caller=caller, prompt="Slow [[slow:3]][[reply:one two three]]", enqueue=False)
    job = job_claim_next()
    thread = _run_in_thread(job.pk)
    assert _wait(lambda: Job.objects.get(pk=job.pk).cli_pid is not None)
    worker.request_stop("SIGTERM")
    thread.join(30)
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING, job.error_message
    assert (job.worker, job.started_at, job.cli_pid) == ("", None, None)
    # Nothing of it was seen but the CLI's own start-up messages.
    assert set(job.events.values_list("type", flat=True)) <= {"system"}


@pytest.mark.usefixtures("upstream")
def test_a_job_the_model_was_answering_ends_failed_naming_the_shutdown(caller, settings):
    settings.SHUTDOWN_GRACE_SECONDS = 1
    job_create(
        caller=caller,
        prompt="Slow [[slow:1]][[reply:one two three four five six seven eight nine ten]]",
        options={"partial_messages": True},
        enqueue=False,
    )
    job = job_claim_next()
    started = time.monotonic()
    thread = _run_in_thread(job.pk)
    assert _wait(lambda: Job.objects.get(pk=job.pk).events.filter(type="stream_event").exists())
    worker.request_stop("SIGTERM")
    stop_at = time.monotonic()
    thread.join(30)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "shut down (SIGTERM)" in job.error_message and "SHUTDOWN_GRACE_SECONDS" in job.error_message
    assert time.monotonic() - stop_at < settings.SHUTDOWN_GRACE_SECONDS + settings.JOB_KILL_GRACE_SECONDS + 5
    assert time.monotonic() - started < 30
    # Nothing of the CLI runs any more (the sandbox's init may wait as a zombie for its adopter).
    assert not group_running(job.cli_pid)


def test_a_run_broken_off_by_the_database_before_the_cli_started_goes_back_to_the_queue(
    caller, wakeups, monkeypatch
):
    """After a PostgreSQL restart a worker's pool may still be reconnecting: the claim
    works, the run's first query does not. The job must not stay running until the
    reaper calls its (live) worker dead: nothing of it ran, so it runs again."""
    from django.db import OperationalError

    def broken(job_id):
        raise OperationalError("couldn't get a connection after 3.00 sec")

    monkeypatch.setattr("jobs.runner.run_job", broken)
    job = job_create(caller=caller, prompt="queued across the restart")
    sent = len(wakeups)
    with pytest.raises(OperationalError):
        tasks.run_pending_jobs()
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.started_at is None and not job.worker
    assert len(wakeups) > sent  # a wake-up for it went out
    ran: list[str] = []
    monkeypatch.setattr("jobs.runner.run_job", completing_runner(ran))
    assert tasks.run_pending_jobs() == 1
    assert ran == ["queued across the restart"]


@pytest.mark.parametrize("cli_started", [False, True])
def test_a_run_broken_off_otherwise_fails_at_once_with_the_error(caller, wakeups, monkeypatch, cli_started):
    """Any other error would recur (no requeue loop), and a job whose CLI had
    started may have done work: both end failed, the error named, as the last event."""
    from django.db import OperationalError

    def broken(job_id):
        if cli_started:
            worker.cli_started(os.getpid())
            raise OperationalError("the connection is closed")
        raise ValueError("a bug in the runner")

    monkeypatch.setattr("jobs.runner.run_job", broken)
    job = job_create(caller=caller, prompt="broken")
    with pytest.raises((OperationalError, ValueError)):
        tasks.run_pending_jobs()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    expected = "the connection is closed" if cli_started else "ValueError: a bug in the runner"
    assert expected in job.error_message
    assert ("lost its database connection" if cli_started else "broke off") in job.error_message
    assert job.events.order_by("-seq").first().data["message"] == job.error_message
