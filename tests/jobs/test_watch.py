"""``jobs.watch``: the one watch over a running job, shared by the runner and the pipeline."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.utils import timezone

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.services import job_create
from jobs.watch import JobStopped, JobWatch, StopReason

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running(monkeypatch):
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    key, _ = api_key_create(name="watch")
    job_create(caller=Caller(api_key=key), prompt="p")
    return job_claim_next()


def test_stop_reasons_are_plain_strings():
    assert StopReason.CANCELLED == "cancelled" and str(StopReason.TIMEOUT) == "timeout"


def test_a_cancel_request_stops_the_watch_and_its_callbacks_run(running):
    watch = JobWatch(running.pk, 60, interval=0.05).start()
    heard = []
    watch.on_stop(heard.append)
    Job.objects.filter(pk=running.pk).update(cancel_requested_at=timezone.now())
    assert watch.stopped.wait(5)
    watch.close()
    assert heard == [StopReason.CANCELLED]
    with pytest.raises(JobStopped) as stopped:
        watch.check()
    assert stopped.value.reason == StopReason.CANCELLED
    watch.on_stop(heard.append)  # once stopped, at once
    assert heard == [StopReason.CANCELLED, StopReason.CANCELLED]


def test_deletion_and_timeout_in_an_event_loop(running):
    assert asyncio.run(JobWatch(running.pk, 0.1, interval=0.05).run()) == StopReason.TIMEOUT
    watch = JobWatch(running.pk, 60, interval=0.05)
    Job.objects.filter(pk=running.pk).delete()
    assert asyncio.run(watch.run()) == StopReason.DELETED


def test_it_beats_and_records_the_cli_pid(running, settings):
    settings.JOB_HEARTBEAT_SECONDS = 0.01
    Job.objects.filter(pk=running.pk).update(heartbeat_at=None)
    watch = JobWatch(running.pk, 60)
    watch.cli_pid = 4242
    time.sleep(0.02)
    assert watch.poll() is None
    row = Job.objects.get(pk=running.pk)
    assert row.heartbeat_at is not None and row.cli_pid == 4242 and row.status == JobStatus.RUNNING


def test_a_tick_stops_it_first():
    watch = JobWatch(None, 60, interval=0.01)
    assert asyncio.run(watch.run(tick=lambda: StopReason.LIMIT)) == StopReason.LIMIT
