"""Fair sharing and spend control with the real ``claude`` CLI (fake upstream):
usage rows equal the jobs' own figures, a budget caps a running job through
``--max-budget-usd`` and then refuses, revocation stops a running CLI."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import api_key_revoke
from claudesvc.auth import Caller
from jobs import runner
from jobs.models import Job, JobStatus, UsageDaily
from jobs.queue import job_claim_next
from jobs.services import job_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def submit(key, prompt: str, **kwargs) -> Job:
    return job_create(caller=Caller(api_key=key), prompt=prompt, enqueue=False, **kwargs)


def run_next() -> Job:
    job = job_claim_next()
    assert job is not None
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def test_usage_sums_equal_the_jobs_own_figures(client_for, owner_key, other_key):
    alice, bob = owner_key, other_key
    submit(alice.row, "one [[reply:One]]", model="haiku")
    submit(alice.row, "two [[reply:Two]]", model="sonnet", source="compat")
    submit(bob.row, "three [[reply:Three]]", model="haiku")
    submit(alice.row, "four [[error:400]]", model="haiku")
    ran = [run_next() for _ in range(4)]
    assert [j.status for j in ran].count(JobStatus.COMPLETED) == 3
    mine = Job.objects.filter(api_key=alice.row)
    today = timezone.localdate(timezone.now(), dt.UTC)
    data = client_for(alice).get(f"/usage?from={today}&to={today}&group_by=model").json()["data"]
    totals = data["totals"]
    assert totals["jobs"] == 3 and totals["completed"] == 2
    assert totals["cost_usd"] == pytest.approx(sum(j.cost_usd or 0 for j in mine), rel=1e-9)
    assert totals["cost_usd"] > 0
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        assert totals[name] == sum((j.usage or {}).get(name, 0) for j in mine), name
    by_model = {g["model"]: g for g in data["groups"]}
    assert by_model["haiku"]["jobs"] == 2 and by_model["sonnet"]["jobs"] == 1
    sources = client_for(alice).get("/usage?group_by=source").json()["data"]["groups"]
    assert {g["source"]: g["jobs"] for g in sources} == {"jobs": 2, "compat": 1}
    # Bob sees his own only.
    assert client_for(bob).get("/usage").json()["data"]["totals"]["jobs"] == 1


def test_a_budget_caps_a_running_job_then_refuses_the_next(client_for, make_key, settings):
    settings.RATELIMIT_ENABLE = False
    alice = make_key("alice", budget_daily_usd=Decimal("0.0001"))
    # Two turns (a tool call, then the answer): the CLI checks its budget after the first,
    # which costs more than the cap (the fake counts a token per 40 characters of input).
    job = submit(alice.row, 'look [[tool:Glob {"pattern": "*"}]] ' + "filler " * 12000, model="haiku")
    ran = run_next()
    assert ran.pk == job.pk
    assert ran.max_budget_usd == pytest.approx(0.0001)
    assert ran.status == JobStatus.FAILED, (ran.status, ran.error_message)
    assert ran.error_message.startswith("budget_exceeded"), ran.error_message
    assert ran.cost_usd > 0.0001
    assert ran.num_turns == 1  # stopped before the second turn
    # What it spent is counted, and the key is now over its budget: refused with 402.
    row = UsageDaily.objects.get(api_key=alice.row)
    assert row.cost_usd == pytest.approx(ran.cost_usd)
    response = client_for(alice).post("/jobs", {"prompt": "more"}, format="json")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"


def test_revoking_a_key_stops_its_running_cli_and_its_queue(owner_key, other_key):
    alice, bob = owner_key.row, other_key.row
    slow = submit(alice, "slow [[slow:0.5]] " + "word " * 60, model="haiku")
    queued = [submit(alice, f"queued {i}") for i in range(3)]
    bobs = submit(bob, "mine [[reply:Mine]]", model="haiku")
    claimed = job_claim_next()
    assert claimed.pk == slow.pk

    def work() -> None:
        try:
            runner.run_job(claimed.pk)
        finally:
            connections.close_all()

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 60
    while not Job.objects.filter(pk=slow.pk, cli_pid__isnull=False).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    api_key_revoke(key=alice)
    worker.join(90)
    assert not worker.is_alive()
    slow.refresh_from_db()
    assert slow.status == JobStatus.CANCELLED, slow.error_message
    for job in queued:
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED and "revoked" in job.error_message
    # The other key's job is untouched and is the next to run.
    assert run_next().pk == bobs.pk
    assert Job.objects.get(pk=bobs.pk).status == JobStatus.COMPLETED


def test_process_priority_does_not_jump_another_keys_queue(client_for, owner_key, other_key, settings):
    settings.RATELIMIT_ENABLE = False
    alice, bob = owner_key, other_key
    mine = [submit(alice.row, f"first come {i} [[reply:A{i}]]", model="haiku") for i in range(2)]
    urgent = client_for(bob).post(
        "/api/v1/claude/execute/async",
        {"prompt": "urgent [[reply:B]]", "model": "haiku", "priority": 100},
        format="json",
    )
    assert urgent.status_code == 202, urgent.content
    (bobs,) = Job.objects.filter(api_key=bob.row)
    order = [run_next() for _ in range(3)]
    assert all(j.status == JobStatus.COMPLETED for j in order), [j.error_message for j in order]
    # One job at a time, so neither key ever has more running than the other: first come,
    # first served across keys, and bob's priority 100 does not overtake alice's older jobs.
    assert [j.pk for j in order] == [mine[0].pk, mine[1].pk, bobs.pk]
    # A key flagged in the admin may overtake.
    ApiKey.objects.filter(pk=bob.row.pk).update(priority_across_keys=True)
    later = submit(alice.row, "later [[reply:A]]", model="haiku")
    flagged = submit(bob.row, "flagged [[reply:B]]", model="haiku", priority=100)
    assert run_next().pk == flagged.pk
    assert run_next().pk == later.pk
