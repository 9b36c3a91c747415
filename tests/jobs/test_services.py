"""The job core's writes: claiming, priority, cancelling, reaping."""

from datetime import timedelta

import pytest
from django.utils import timezone

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, ServiceError
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.reaper import job_reap_stale
from jobs.services import job_cancel, job_create, job_transition, resolve_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def caller(owner_key):
    return Caller(api_key=owner_key.row)


def test_a_job_is_claimed_once(caller):
    job = job_create(caller=caller, prompt="hi", enqueue=False)
    assert job_claim_next(worker="w1").pk == job.pk
    # A redelivered task finds nothing left to run.
    assert job_claim_next(worker="w2") is None
    job.refresh_from_db()
    assert (job.status, job.worker) == (JobStatus.RUNNING, "w1")


def test_higher_priority_runs_first_then_first_come(caller):
    low = job_create(caller=caller, prompt="low", enqueue=False)
    high_a = job_create(caller=caller, prompt="high a", priority=50, enqueue=False)
    high_b = job_create(caller=caller, prompt="high b", priority=50, enqueue=False)
    order = [job_claim_next().pk for _ in range(3)]
    assert order == [high_a.pk, high_b.pk, low.pk]


def test_jobs_are_enqueued_after_commit(caller, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job_create(caller=caller, prompt="hi")
    assert len(callbacks) == 1


def test_cancelling_a_pending_job_ends_it_at_once(caller):
    job = job_cancel(job=job_create(caller=caller, prompt="hi", enqueue=False))
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at is not None
    assert job.events.get().data["error"] == "cancelled"
    assert job_claim_next() is None


def test_cancelling_a_running_job_asks_its_worker(caller):
    job_create(caller=caller, prompt="hi", enqueue=False)
    job = job_cancel(job=job_claim_next())
    assert job.status == JobStatus.RUNNING
    assert job.cancel_requested_at is not None


def test_cancelling_a_finished_job_is_a_conflict(caller):
    job = job_create(caller=caller, prompt="hi", enqueue=False)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED)
    job.refresh_from_db()
    with pytest.raises(Conflict):
        job_cancel(job=job)


def test_transitions_follow_the_table(caller):
    job = job_create(caller=caller, prompt="hi", enqueue=False)
    with pytest.raises(ValueError):
        job_transition(job_id=job.pk, frm=JobStatus.PENDING, to=JobStatus.COMPLETED)
    assert not job_transition(job_id=job.pk, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED)


def test_the_reaper_fails_jobs_whose_worker_died(caller, settings):
    job_create(caller=caller, prompt="hi", enqueue=False)
    lost = job_claim_next()
    job_create(caller=caller, prompt="alive", enqueue=False)
    alive = job_claim_next()
    Job.objects.filter(pk=lost.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 1)
    )
    assert job_reap_stale() == 1
    lost.refresh_from_db()
    alive.refresh_from_db()
    assert lost.status == JobStatus.FAILED
    assert "stopped responding" in lost.error_message
    assert alive.status == JobStatus.RUNNING


@pytest.mark.parametrize(
    "name", ["haiku", "sonnet", "opus", "OPUS", "claude-opus-4-1", "claude-sonnet-4-20250514"]
)
def test_models_it_accepts(name):
    assert resolve_model(name) == name.lower()


@pytest.mark.parametrize("name", ["gpt-4o", "claude-", "sonnet; rm -rf /", "--dangerously-skip-permissions"])
def test_models_it_refuses(name):
    with pytest.raises(ServiceError) as exc:
        resolve_model(name)
    assert exc.value.field == "model"


def test_a_job_may_not_outlast_the_service_timeout(caller, settings):
    with pytest.raises(ServiceError):
        job_create(
            caller=caller, prompt="hi", timeout_seconds=settings.JOB_TIMEOUT_SECONDS + 1, enqueue=False
        )


def test_a_given_job_is_claimed_once(caller):
    from jobs.queue import job_claim

    first = job_create(caller=caller, prompt="first", enqueue=False)
    second = job_create(caller=caller, prompt="second", priority=90, enqueue=False)
    # Not the best pending job, but the one asked for.
    assert job_claim(job_id=first.pk, worker="inline").pk == first.pk
    assert job_claim(job_id=first.pk) is None
    first.refresh_from_db()
    assert (first.status, first.worker) == (JobStatus.RUNNING, "inline")
    assert Job.objects.get(pk=second.pk).status == JobStatus.PENDING
