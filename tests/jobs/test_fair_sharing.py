"""Fair sharing and spend control between keys: active/running limits, the fair
claim, usage accounting, budgets and revocation (without the CLI; the real
CLI runs in test_fair_sharing_cli.py)."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import api_key_revoke
from claudesvc.auth import Caller
from jobs.models import Job, JobStatus, UsageDaily
from jobs.queue import _claim_from, _owner_queues, job_claim_next
from jobs.services import job_create, job_transition
from jobs.usage import budget_remaining, owner_spend

pytestmark = pytest.mark.django_db


def submit(key, n: int = 1, **kwargs) -> list[Job]:
    return [
        job_create(caller=Caller(api_key=key), prompt=f"job {i}", enqueue=False, **kwargs) for i in range(n)
    ]


def finish(job: Job, *, cost: float = 0.0, status=JobStatus.COMPLETED, **fields) -> None:
    if Job.objects.get(pk=job.pk).status == JobStatus.PENDING:
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=timezone.now())
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2}
    assert job_transition(
        job_id=job.pk, frm=JobStatus.RUNNING, to=status, usage=usage, cost_usd=cost, **fields
    )


# The stories below name the two keys: alice is the owner's key, bob the other one.
@pytest.fixture
def alice(owner_key) -> ApiKey:
    return owner_key.row


@pytest.fixture
def bob(other_key) -> ApiKey:
    return other_key.row


# -- fair claim ----------------------------------------------------------------------------


def test_a_flood_from_one_key_does_not_delay_another_keys_job(alice, bob):
    submit(alice, 15)
    first = job_claim_next()  # alice's, the only key waiting
    assert first.api_key_id == alice.pk
    (bobs,) = submit(bob)
    # The next free worker takes bob's job: bob has nothing running, alice has one.
    assert job_claim_next().pk == bobs.pk


def test_keys_take_turns_while_both_have_a_backlog(alice, bob):
    submit(alice, 6)
    submit(bob, 6)
    owners = [job_claim_next().api_key_id for _ in range(6)]
    assert sorted(owners) == sorted([alice.pk] * 3 + [bob.pk] * 3)
    # With equal running counts the one who has waited longest goes first: strictly alternating.
    assert all(a != b for a, b in itertools.pairwise(owners))


def test_two_workers_free_at_once_do_not_both_serve_the_same_key(alice, bob):
    submit(alice, 3)
    (bobs,) = submit(bob)
    # Both workers read the order before either claims: neither key has a job running, and
    # alice has waited longer, so she comes first for both.
    (stale, _) = _owner_queues()
    assert stale.api_key_id == alice.pk and stale.running == 0
    assert job_claim_next(worker="host:1").api_key_id == alice.pk  # the first worker's claim
    # The second worker's order is stale: alice has one running now, bob none. It orders again.
    assert _claim_from(stale, "host:2") == (None, True)
    assert job_claim_next(worker="host:2").pk == bobs.pk


def test_within_a_key_priority_then_age(alice):
    low, high_a, high_b = submit(alice, 1)[0], *submit(alice, 2, priority=50)
    assert [job_claim_next().pk for _ in range(3)] == [high_a.pk, high_b.pk, low.pk]


def test_priority_does_not_jump_another_keys_queue(alice, bob):
    (older,) = submit(alice)
    (urgent,) = submit(bob, priority=100)
    assert job_claim_next().pk == older.pk
    assert job_claim_next().pk == urgent.pk


def test_a_flagged_key_may_prioritise_across_keys(alice, bob):
    ApiKey.objects.filter(pk=bob.pk).update(priority_across_keys=True)
    (older,) = submit(alice)
    (urgent,) = submit(bob, priority=100)
    assert job_claim_next().pk == urgent.pk
    assert job_claim_next().pk == older.pk


def test_the_running_cap_leaves_a_keys_further_jobs_pending(alice, bob, settings):
    settings.JOB_MAX_RUNNING_PER_KEY = 2
    submit(alice, 4)
    assert job_claim_next().api_key_id == alice.pk
    assert job_claim_next().api_key_id == alice.pk
    assert job_claim_next() is None  # alice at her cap, nobody else waiting
    (bobs,) = submit(bob)
    assert job_claim_next().pk == bobs.pk
    # A key's own value replaces the default.
    ApiKey.objects.filter(pk=alice.pk).update(max_running_jobs=3)
    assert job_claim_next().api_key_id == alice.pk
    assert Job.objects.filter(api_key=alice, status=JobStatus.RUNNING).count() == 3


def test_jwt_users_are_owners_of_their_own(alice, jwt_user, settings):
    user = jwt_user.row
    submit(alice, 3)
    job_claim_next()
    mine = job_create(caller=Caller(user_id=user.pk), prompt="hi", enqueue=False)
    assert job_claim_next().pk == mine.pk


def test_claiming_is_one_or_two_queries_per_job(alice, bob, settings, django_assert_max_num_queries):
    settings.JOB_MAX_ACTIVE_PER_KEY = 100
    submit(alice, 30)
    submit(bob, 30)
    # owners (1) + the owner's next job (1) + the owner's lock and running count (2) + the
    # claim (1) + reading it back (1); savepoint statements of the transaction come on top.
    with django_assert_max_num_queries(8):
        job_claim_next()


# -- active-job limit, in each family's shape -------------------------------------------------


@pytest.fixture
def limited(settings):
    settings.JOB_MAX_ACTIVE_PER_KEY = 2
    settings.RATELIMIT_ENABLE = False


def fill(key) -> None:
    submit(key, 2)


def test_the_active_limit_refuses_jobs_api_with_429(client_for, owner_key, limited):
    fill(owner_key.row)
    response = client_for(owner_key).post("/jobs", {"prompt": "one more"}, format="json")
    assert response.status_code == 429
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "active_jobs_limit"
    assert "limit is 2" in body["error"]["message"]
    assert int(response["Retry-After"]) >= 1
    assert Job.objects.filter(api_key=owner_key.row).count() == 2


def test_the_active_limit_counts_per_key(client_for, owner_key, other_key, limited):
    fill(owner_key.row)
    assert client_for(other_key).post("/jobs", {"prompt": "mine"}, format="json").status_code == 202


def test_a_finished_job_frees_its_place(client_for, owner_key, limited):
    first, _ = submit(owner_key.row, 2)
    finish(first)
    assert client_for(owner_key).post("/jobs", {"prompt": "next"}, format="json").status_code == 202


def test_the_active_limit_refuses_openai_with_429(client_for, owner_key, limited):
    fill(owner_key.row)
    response = client_for(owner_key).post(
        "/v1/chat/completions",
        {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "active_jobs_limit")
    assert response["Retry-After"]


def test_the_active_limit_refuses_anthropic_with_429(client_for, owner_key, limited):
    fill(owner_key.row)
    response = client_for(owner_key).post(
        "/v1/messages",
        {"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )
    assert response.status_code == 429
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "active_jobs_limit" in body["error"]["message"]
    assert response["Retry-After"]


def test_the_active_limit_refuses_process_api_with_429(client_for, owner_key, limited):
    fill(owner_key.row)
    response = client_for(owner_key).post("/api/v1/claude/execute/async", {"prompt": "hi"}, format="json")
    assert response.status_code == 429
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == "ACTIVE_JOBS_LIMIT"
    assert set(body["meta"]) == {"timestamp", "requestId"}
    assert response["Retry-After"]


def test_a_keys_own_active_limit_replaces_the_default(client_for, owner_key, limited):
    ApiKey.objects.filter(pk=owner_key.row.pk).update(max_active_jobs=3)
    fill(owner_key.row)
    assert client_for(owner_key).post("/jobs", {"prompt": "third"}, format="json").status_code == 202
    assert client_for(owner_key).post("/jobs", {"prompt": "fourth"}, format="json").status_code == 429


def test_jwt_users_get_the_default_active_limit(client_for, jwt_user, limited):
    user = jwt_user.row
    for i in range(2):
        job_create(caller=Caller(user_id=user.pk), prompt=f"j{i}", enqueue=False)
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {jwt_user.token}")
    response = client.post("/jobs", {"prompt": "x"}, format="json")
    assert response.status_code == 429 and response.json()["error"]["code"] == "active_jobs_limit"


# -- usage accounting ---------------------------------------------------------------------------


def test_a_job_is_counted_once_when_it_ends(alice):
    job, other = submit(alice, 2)
    finish(job, cost=0.25)
    # A second finish loses the compare-and-set and counts nothing.
    assert not job_transition(job_id=job.pk, frm=JobStatus.RUNNING, to=JobStatus.FAILED)
    row = UsageDaily.objects.get(api_key=alice)
    assert (row.jobs, row.completed, row.input_tokens, row.output_tokens) == (1, 1, 10, 5)
    assert row.cost_usd == pytest.approx(0.25)
    finish(other, cost=0.5, status=JobStatus.FAILED)
    row.refresh_from_db()
    assert (row.jobs, row.completed, row.cache_read_input_tokens) == (2, 1, 4)
    assert row.cost_usd == pytest.approx(0.75)


def test_usage_rows_are_per_day_model_and_source(alice):
    (a,) = submit(alice, model="haiku")
    (b,) = submit(alice, model="opus", source="compat")
    finish(a, cost=0.1)
    finish(b, cost=0.2, finished_at=timezone.now() - dt.timedelta(days=1))
    assert UsageDaily.objects.filter(api_key=alice).count() == 2


def test_usage_endpoint_sums_equal_the_jobs_figures(client_for, owner_key):
    key = owner_key.row
    jobs = [*submit(key, 2, model="haiku"), *submit(key, 1, model="opus", source="process")]
    for i, job in enumerate(jobs):
        finish(job, cost=0.01 * (i + 1))
    yesterday = timezone.now() - dt.timedelta(days=1)
    (old,) = submit(key, model="haiku")
    finish(old, cost=1.0, finished_at=yesterday)
    today = timezone.localdate(timezone.now(), dt.UTC)
    response = client_for(owner_key).get(f"/usage?from={today}&to={today}&group_by=model")
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["totals"]["jobs"] == 3
    assert data["totals"]["cost_usd"] == pytest.approx(
        sum(j.cost_usd for j in Job.objects.filter(pk__in=[j.pk for j in jobs]))
    )
    assert {g["model"]: g["jobs"] for g in data["groups"]} == {"haiku": 2, "opus": 1}
    by_day = (
        client_for(owner_key).get(f"/usage?from={yesterday.date()}&group_by=day&to={today}").json()["data"]
    )
    assert [g["day"] for g in by_day["groups"]] == [str(yesterday.date()), str(today)]
    assert by_day["totals"]["jobs"] == 4
    assert by_day["totals"]["cost_usd"] == pytest.approx(sum(Job.objects.values_list("cost_usd", flat=True)))
    by_source = client_for(owner_key).get(f"/usage?from={today}&group_by=source").json()["data"]
    assert {g["source"]: g["jobs"] for g in by_source["groups"]} == {"jobs": 2, "process": 1}
    assert data["limits"]["active_jobs"] == 0


def test_usage_shows_only_the_callers_own(client_for, owner_key, other_key):
    (job,) = submit(owner_key.row)
    finish(job, cost=3.0)
    data = client_for(other_key).get("/usage").json()["data"]
    assert data["totals"]["jobs"] == 0 and data["groups"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("group_by=week", "group_by"),
        ("from=2026-05-02&to=2026-05-01", "from"),
        ("from=2020-01-01&to=2026-01-01", "from"),
        ("form=2026-01-01", "form"),
        ("to=", "to"),
        ("from=", "from"),
        ("group_by=", "group_by"),
    ],
)
def test_bad_usage_parameters_are_400_naming_them(client_for, owner_key, query, field):
    response = client_for(owner_key).get(f"/usage?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field), error


def test_usage_needs_a_key(client):
    assert client.get("/usage").status_code == 401


# -- budgets ----------------------------------------------------------------------------------


def test_a_key_over_its_daily_budget_is_refused_in_each_family(client_for, owner_key, settings):
    settings.RATELIMIT_ENABLE = False
    ApiKey.objects.filter(pk=owner_key.row.pk).update(budget_daily_usd=Decimal("0.50"))
    (job,) = submit(owner_key.row)
    finish(job, cost=0.6)
    client = client_for(owner_key)
    jobs = client.post("/jobs", {"prompt": "x"}, format="json")
    assert jobs.status_code == 402 and jobs.json()["error"]["code"] == "budget_exceeded"
    assert "daily budget of $0.50" in jobs.json()["error"]["message"]
    chat = client.post(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, format="json"
    )
    assert chat.status_code == 402 and chat.json()["error"]["code"] == "budget_exceeded"
    messages = client.post(
        "/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, format="json"
    )
    assert messages.status_code == 402 and messages.json()["error"]["type"] == "billing_error"
    assert "budget_exceeded" in messages.json()["error"]["message"]
    process = client.post("/api/v1/claude/execute/async", {"prompt": "x"}, format="json")
    assert process.status_code == 402 and process.json()["error"]["code"] == "BUDGET_EXCEEDED"
    assert Job.objects.filter(api_key=owner_key.row).count() == 1


def test_the_monthly_budget_counts_earlier_days(alice):
    ApiKey.objects.filter(pk=alice.pk).update(budget_monthly_usd=Decimal("1"))
    alice.refresh_from_db()
    today = timezone.now()
    (job,) = submit(alice)
    finish(job, cost=0.7, finished_at=today.replace(day=1, hour=0, minute=0))
    assert budget_remaining(alice) == pytest.approx(0.3)
    (job,) = submit(alice)
    finish(job, cost=0.4)
    assert owner_spend(api_key_id=alice.pk, user_id=None).month == pytest.approx(1.1)
    with pytest.raises(Exception, match="monthly budget"):
        submit(alice)


def test_a_started_job_is_capped_to_the_remaining_budget(alice, bob):
    ApiKey.objects.filter(pk=alice.pk).update(budget_daily_usd=Decimal("2"))
    done, waiting = submit(alice, 2)
    finish(done, cost=0.5)
    claimed = job_claim_next()
    assert claimed.pk == waiting.pk
    assert claimed.max_budget_usd == pytest.approx(1.5)
    submit(bob)
    assert job_claim_next().max_budget_usd is None


def test_pending_jobs_are_refused_at_claim_once_the_budget_is_spent(alice, bob):
    ApiKey.objects.filter(pk=alice.pk).update(budget_daily_usd=Decimal("1"))
    running, *queued = submit(alice, 3)
    job_claim_next()
    (bobs,) = submit(bob)
    finish(running, cost=1.2)  # the running job overshot; the queued ones must not start
    assert job_claim_next().pk == bobs.pk
    assert job_claim_next() is None
    for job in queued:
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
        assert job.error_message.startswith("budget_exceeded")
        assert job.events.last().data["error"] == "budget_exceeded"


def test_transcription_provider_cost_counts(alice, settings):
    from transcription.models import Transcription

    settings.TRANSCRIPTION_PRICE_PER_MINUTE_USD = 0.006
    (job,) = submit(alice, kind="transcription")
    Transcription.objects.create(
        job=job, audio_name="a.mp3", audio_size=1, duration_seconds=600, chunk_count=2
    )
    finish(job, cost=0.0)
    row = UsageDaily.objects.get(api_key=alice)
    assert (row.audio_seconds, row.provider_calls) == (600, 2)
    assert row.provider_cost_usd == pytest.approx(0.06)
    assert row.cost_usd == 0  # the parent's cost repeats its summary jobs', counted when they end
    assert owner_spend(api_key_id=alice.pk, user_id=None).today == pytest.approx(0.06)


# -- revocation ------------------------------------------------------------------------------


def test_revoking_a_key_cancels_its_queue_and_stops_its_running_jobs(alice, bob):
    running = submit(alice)[0]
    job_claim_next()
    queued = submit(alice, 3)
    (bobs,) = submit(bob)
    api_key_revoke(key=alice)
    for job in queued:
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
        assert "revoked" in job.error_message
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING and running.cancel_requested_at is not None
    bobs.refresh_from_db()
    assert bobs.status == JobStatus.PENDING and bobs.cancel_requested_at is None
    assert job_claim_next().pk == bobs.pk


def test_deactivating_a_user_cancels_their_jobs(alice, jwt_user, django_capture_on_commit_callbacks):
    user = jwt_user.row
    mine = [job_create(caller=Caller(user_id=user.pk), prompt=f"j{i}", enqueue=False) for i in range(2)]
    (keys,) = submit(alice)
    user.is_active = False
    with django_capture_on_commit_callbacks(execute=True):
        user.save()
    for job in mine:
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED and "deactivated" in job.error_message
    keys.refresh_from_db()
    assert keys.status == JobStatus.PENDING
