"""A worker process that dies mid-job: its heartbeat stops and the reaper fails the job."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.reaper import job_reap_stale
from jobs.services import job_create
from tests.e2e.conftest import ROOT, _database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def test_a_killed_worker_leaves_a_stale_heartbeat_that_the_reaper_fails(settings, tmp_path):
    key, _ = api_key_create(name="doomed")
    job_create(caller=Caller(api_key=key), prompt="Long [[slow:0.5]]" + " word" * 200, enqueue=False)
    job = job_claim_next()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "JOBS_ROOT": str(settings.JOBS_ROOT),
        "CLAUDE_HOME": str(settings.CLAUDE_HOME),
        "JOB_HEARTBEAT_SECONDS": "1",
        "JOB_STALE_SECONDS": "10",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import django; django.setup(); from jobs import runner; runner.run_job('{job.pk}')",
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "claudesvc.settings"},
    )
    try:
        deadline = time.monotonic() + 30
        while Job.objects.get(pk=job.pk).cli_pid is None and time.monotonic() < deadline:
            time.sleep(0.1)
        first_beat = Job.objects.get(pk=job.pk).heartbeat_at
        # Every second; generous on a loaded machine.
        deadline = time.monotonic() + 15
        while Job.objects.get(pk=job.pk).heartbeat_at <= first_beat and time.monotonic() < deadline:
            time.sleep(0.2)
        assert Job.objects.get(pk=job.pk).heartbeat_at > first_beat, "a live worker keeps beating"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    beat_at_death = Job.objects.get(pk=job.pk).heartbeat_at
    time.sleep(2.5)
    job.refresh_from_db()
    assert job.heartbeat_at == beat_at_death
    assert job.status == JobStatus.RUNNING
    # Not stale yet: the reaper leaves it alone.
    assert job_reap_stale() == 0
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)
    )
    assert job_reap_stale() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "stopped responding" in job.error_message
    # The orphaned CLI (its own process group) is not left behind for long either: with its
    # worker gone its stdin is closed, and it ends.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(job.cli_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the CLI outlived its dead worker by a minute")
