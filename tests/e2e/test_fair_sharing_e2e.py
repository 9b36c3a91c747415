"""Two keys against the live server, worker cluster (2 workers) and real CLI:
a flood from one key does not delay the other's job beyond one job slot, the
active-job limit holds under simultaneous requests, /usage adds up."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Each flood job streams 12 words with a pause between them: a few seconds of work.
SLOW = "flood [[slow:0.25]] " + "word " * 12
# How long a claim that chose its job before another row was visible may take to commit.
IN_FLIGHT = timedelta(seconds=0.5)


def wait_all_done(job_ids: list[str], timeout: float = 180) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = list(Job.objects.filter(pk__in=job_ids))
        if len(jobs) == len(job_ids) and all(j.is_final for j in jobs):
            return jobs
        time.sleep(0.3)
    raise AssertionError(
        "jobs did not finish: " + str([(j.pk, j.status) for j in Job.objects.filter(pk__in=job_ids)])
    )


def test_a_flood_from_one_key_delays_another_keys_job_by_one_slot_at_most(service, owner_key, other_key):
    alice, bob = owner_key, other_key
    with service.client(alice) as client:
        flood = []
        for _ in range(8):
            response = client.post("/jobs", json={"prompt": SLOW, "model": "haiku"})
            assert response.status_code == 202, response.text
            flood.append(response.json()["data"]["id"])
    # Both workers busy with the flood before bob asks.
    deadline = time.monotonic() + 60
    while Job.objects.filter(pk__in=flood, status=JobStatus.RUNNING).count() < 2:
        assert time.monotonic() < deadline, service.logs()
        time.sleep(0.1)
    with service.client(bob) as client:
        response = client.post("/jobs", json={"prompt": "quick [[reply:Done]]", "model": "haiku"})
        assert response.status_code == 202, response.text
        bobs_id = response.json()["data"]["id"]
    # His row is committed by now. (Its created_at is set before the commit: a flood job
    # may rightly start in between, while the workers cannot see his job yet.)
    asked = timezone.now()
    jobs = {str(j.pk): j for j in wait_all_done([*flood, bobs_id])}
    bobs = jobs[bobs_id]
    assert bobs.status == JobStatus.COMPLETED, bobs.error_message
    # He took the first free slot. Only when both flood jobs end together may one flood job
    # start just before him, in the same round: both owners then have none running, and the
    # flood's next job has waited longer (the fair order's tie-break). Never a whole job ahead.
    # A claim that read the queue just before his row was visible may still commit just after
    # `asked` (the worker chose, then waited for the database's write lock): that is no overtaking.
    timeline = sorted(
        (j.started_at, j.finished_at, "bob" if j.pk == bobs.pk else "flood") for j in jobs.values()
    )
    why = f"asked at {asked}; started, finished: {timeline}\n{service.logs()}"
    overtook = [
        j for j in jobs.values() if j.pk != bobs.pk and asked + IN_FLIGHT < j.started_at < bobs.started_at
    ]
    assert len(overtook) <= 1, why
    assert all((bobs.started_at - j.started_at).total_seconds() < 1.5 for j in overtook), why
    # ... which is the first flood job to end after he asked (plus the worker's wake-up).
    first_free = min(j.finished_at for j in jobs.values() if j.pk != bobs.pk and j.finished_at > asked)
    assert (bobs.started_at - first_free).total_seconds() < 10
    # The flood itself still ran in order, all of it.
    assert all(jobs[i].status == JobStatus.COMPLETED for i in flood)


def test_the_active_limit_holds_under_simultaneous_requests(service, make_key):
    alice = make_key("burst", max_active_jobs=4)
    total = 12
    barrier = threading.Barrier(total)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        with service.client(alice) as client:
            barrier.wait()
            response = client.post("/jobs", json={"prompt": SLOW, "model": "haiku"})
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=one) for _ in range(total)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) == 4, statuses
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == total - 4
    assert all(r.json()["error"]["code"] == "active_jobs_limit" and r.headers["Retry-After"] for r in refused)
    created = [r.json()["data"]["id"] for r in answers if r.status_code == 202]
    assert Job.objects.filter(api_key=alice.row).count() == 4
    jobs = wait_all_done(created)
    # /usage over HTTP adds up to the jobs' own figures.
    with service.client(alice) as client:
        totals = client.get("/usage").json()["data"]["totals"]
    assert totals["jobs"] == 4
    assert totals["cost_usd"] == pytest.approx(sum(j.cost_usd or 0 for j in jobs), rel=1e-9)
    assert totals["output_tokens"] == sum(j.usage["output_tokens"] for j in jobs)
