"""The Process API surface (seed 002): envelope, auth, validation, processes, health, metrics."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.exceptions import Throttled

from claudesvc.auth import Caller
from jobs.models import Job, JobStatus
from jobs.process_api.services import process_create, process_id, process_uuid
from jobs.queue import job_claim_next
from jobs.services import job_create, job_transition

pytestmark = pytest.mark.django_db

BASE = "/api/v1/claude"


def make_process(key, *, queued=False, **kwargs) -> Job:
    kwargs.setdefault("prompt", "hello")
    return process_create(caller=Caller(api_key=key.row), queued=queued, **kwargs)


def finish(job: Job, status=JobStatus.COMPLETED, **fields) -> Job:
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=timezone.now())
    defaults = {"result": "Recursion is…", "exit_code": 0, "duration_ms": 2000}
    if status == JobStatus.COMPLETED:
        defaults["usage"] = {
            "input_tokens": 10,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 2,
            "output_tokens": 250,
        }
    job_transition(job_id=job.pk, frm=JobStatus.RUNNING, to=status, **{**defaults, **fields})
    job.refresh_from_db()
    return job


def assert_envelope(body: dict, success: bool = True) -> None:
    assert body["success"] is success
    assert set(body["meta"]) == {"timestamp", "requestId"}
    assert body["meta"]["timestamp"].endswith("Z")
    assert body["meta"]["requestId"].startswith("req_")


# -- ids, envelope, errors ---------------------------------------------------------------------


def test_process_ids_map_to_job_ids_both_ways():
    job_uuid = uuid.uuid4()
    assert process_id(job_uuid) == f"claude_{job_uuid.hex}"
    assert process_uuid(process_id(job_uuid)) == job_uuid
    for bad in [
        str(job_uuid),
        f"claude_{job_uuid}",
        f"claude_{job_uuid.hex.upper()}",
        "claude_abc123",
        "",
        None,
    ]:
        assert process_uuid(bad) is None


def test_a_missing_key_is_unauthorized_in_the_seed_shape(client_for):
    response = client_for(None).get(f"{BASE}/processes")
    assert response.status_code == 401
    body = response.json()
    assert_envelope(body, success=False)
    assert body["error"]["code"] == "UNAUTHORIZED"


def test_a_bad_key_is_unauthorized_with_the_seed_message(client):
    response = client.get(f"{BASE}/metrics", HTTP_X_API_KEY="csk_live_" + "x" * 32)
    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "UNAUTHORIZED",
        "message": "Invalid or expired authentication token",
    }


def test_the_request_id_of_the_caller_is_echoed_in_meta(client_for, owner_key):
    response = client_for(owner_key).get(f"{BASE}/processes", HTTP_X_REQUEST_ID="req_xyz789")
    assert response.json()["meta"]["requestId"] == "req_xyz789"
    assert response["X-Request-ID"] == "req_xyz789"


def test_a_rate_limit_reads_rate_limit_exceeded():
    from jobs.process_api.envelope import process_exception_handler

    response = process_exception_handler(Throttled(wait=60), {"request": None})
    assert response.status_code == 429
    assert response.data["error"] == {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded. Try again in 60 seconds.",
    }
    assert response["Retry-After"] == "60"


def test_an_unexpected_failure_is_an_internal_error(client_for, owner_key, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr("jobs.process_api.views.service_metrics", boom)
    client = client_for(owner_key)
    client.raise_request_exception = False
    response = client.get(f"{BASE}/metrics")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "INTERNAL_ERROR",
        "message": "An internal server error occurred",
    }
    assert "on fire" not in response.content.decode()


# -- execute ------------------------------------------------------------------------------


def test_execute_async_answers_202_pending_and_creates_a_process(client_for, owner_key):
    response = client_for(owner_key).post(
        f"{BASE}/execute/async",
        {
            "prompt": "Explain the concept of recursion in programming",
            "systemPrompt": "You are a helpful programming tutor",
            "maxTokens": 1000,
            "timeoutMs": 1500,
            "priority": 70,
            "model": "haiku",
        },
        format="json",
    )
    assert response.status_code == 202
    body = response.json()
    assert_envelope(body)
    assert body["data"]["status"] == "pending"
    assert body["data"]["message"] == "Process started. Poll /api/v1/claude/processes/:id for status."
    job = Job.objects.get(pk=process_uuid(body["data"]["processId"]))
    assert (job.source, job.status, job.model, job.priority) == ("process", "pending", "haiku", 70)
    assert job.system_prompt == "You are a helpful programming tutor"
    # Whole seconds in the core (rounded up), the milliseconds for the runner.
    assert job.timeout_seconds == 2
    assert job.options == {"api_fallback": True, "queued": False, "max_tokens": 1000, "timeout_ms": 1500}


def test_the_model_defaults_to_the_services_default(client_for, owner_key, settings):
    settings.CLAUDE_DEFAULT_MODEL = "sonnet"
    response = client_for(owner_key).post(f"{BASE}/execute/async", {"prompt": "hi"}, format="json")
    job = Job.objects.get(pk=process_uuid(response.json()["data"]["processId"]))
    assert (job.model, job.priority) == ("sonnet", 0)


def test_the_full_model_name_of_the_seed_is_accepted(client_for, owner_key):
    response = client_for(owner_key).post(
        f"{BASE}/execute/async", {"prompt": "hi", "model": "claude-sonnet-4-20250514"}, format="json"
    )
    assert response.status_code == 202
    assert Job.objects.get().model == "claude-sonnet-4-20250514"


def test_execute_answers_202_queued_when_every_slot_is_busy(client_for, owner_key, other_key, settings):
    settings.MAX_CONCURRENT_PROCESSES = 2
    make_process(other_key)
    job_claim_next()
    make_process(other_key)
    response = client_for(owner_key).post(f"{BASE}/execute", {"prompt": "wait for me"}, format="json")
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] == "queued"
    assert data["message"] == "Request queued due to high load. Use async endpoint or poll for status."
    detail = client_for(owner_key).get(f"{BASE}/processes/{data['processId']}").json()["data"]
    assert detail["status"] == "queued"
    # Once it starts it is simply running.
    job = Job.objects.get(pk=process_uuid(data["processId"]))
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=timezone.now())
    assert (
        client_for(owner_key).get(f"{BASE}/processes/{data['processId']}").json()["data"]["status"]
        == "running"
    )


BAD_BODIES = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": "x" * 100_001}, "prompt"),
    ({"prompt": "hi", "systemPrompt": "s" * 10_001}, "systemPrompt"),
    ({"prompt": "hi", "systemPrompt": 7}, "systemPrompt"),
    ({"prompt": "hi", "model": "gpt-4"}, "model"),
    ({"prompt": "hi", "model": 3}, "model"),
    ({"prompt": "hi", "model": ""}, "model"),
    ({"prompt": "hi", "maxTokens": 0}, "maxTokens"),
    ({"prompt": "hi", "maxTokens": 100_001}, "maxTokens"),
    ({"prompt": "hi", "maxTokens": "100"}, "maxTokens"),
    ({"prompt": "hi", "maxTokens": 10.5}, "maxTokens"),
    ({"prompt": "hi", "maxTokens": True}, "maxTokens"),
    ({"prompt": "hi", "timeoutMs": 999}, "timeoutMs"),
    ({"prompt": "hi", "timeoutMs": 600_001}, "timeoutMs"),
    ({"prompt": "hi", "timeoutMs": "5000"}, "timeoutMs"),
    ({"prompt": "hi", "priority": -1}, "priority"),
    ({"prompt": "hi", "priority": 101}, "priority"),
    ({"prompt": "hi", "priority": "high"}, "priority"),
    ({"prompt": "hi", "workingDirectory": "/tmp"}, "workingDirectory"),
    ({"prompt": "hi", "workingDirectory": 5}, "workingDirectory"),
    ({"prompt": "hi", "max_tokens": 100}, "max_tokens"),
]


@pytest.mark.parametrize("path", ["execute", "execute/async"])
@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_every_bad_field_is_a_validation_error_naming_it(client_for, owner_key, path, body, field):
    response = client_for(owner_key).post(f"{BASE}/{path}", body, format="json")
    assert response.status_code == 400, response.content
    payload = response.json()
    assert_envelope(payload, success=False)
    assert payload["error"]["code"] == "VALIDATION_ERROR"
    assert payload["error"]["field"] == field
    assert field in payload["error"]["message"]
    assert not Job.objects.exists()


def test_the_timeout_may_not_exceed_the_services_job_timeout(client_for, owner_key, settings):
    settings.JOB_TIMEOUT_SECONDS = 60
    response = client_for(owner_key).post(
        f"{BASE}/execute/async", {"prompt": "hi", "timeoutMs": 61_000}, format="json"
    )
    assert response.json()["error"]["field"] == "timeoutMs"


def test_a_body_that_is_not_an_object_or_not_json_is_refused(client_for, owner_key):
    client = client_for(owner_key)
    response = client.post(f"{BASE}/execute/async", ["prompt"], format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    response = client.post(f"{BASE}/execute/async", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert not Job.objects.exists()


# -- workingDirectory --------------------------------------------------------------------------


@pytest.fixture
def workdirs(settings, tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "project" / "src").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, allowed / "escape")
    os.symlink(allowed / "project" / "src", allowed / "shortcut")
    settings.PROCESS_ALLOWED_WORKDIRS = [allowed]
    return allowed, outside


def post_workdir(client_for, key, path):
    return client_for(key).post(
        f"{BASE}/execute/async", {"prompt": "hi", "workingDirectory": path}, format="json"
    )


def test_a_working_directory_inside_an_allowed_one_is_used(client_for, owner_key, workdirs):
    allowed, _ = workdirs
    for given, real in [
        (allowed / "project", allowed / "project"),
        (allowed, allowed),
        (allowed / "shortcut", allowed / "project" / "src"),
    ]:
        response = post_workdir(client_for, owner_key, str(given))
        assert response.status_code == 202, response.content
        job = Job.objects.get(pk=process_uuid(response.json()["data"]["processId"]))
        assert job.options["cwd"] == os.path.realpath(real)


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda a, o: str(a / "project" / ".." / "project"), "'..'"),
        (lambda a, o: str(a / ".." / "outside"), "'..'"),
        (lambda a, o: str(o), "outside"),
        (lambda a, o: str(a / "escape"), "outside"),
        (lambda a, o: str(a / "escape" / "deeper"), "outside"),
        (lambda a, o: "project", "absolute"),
        (lambda a, o: str(a / "missing"), "does not exist"),
        (lambda a, o: str(a) + "-sibling", "outside"),
        (lambda a, o: "", "blank"),
    ],
)
def test_a_working_directory_outside_the_allowed_ones_is_refused(
    client_for, owner_key, workdirs, make_path, message
):
    allowed, outside = workdirs
    (allowed.parent / "allowed-sibling").mkdir()
    response = post_workdir(client_for, owner_key, make_path(allowed, outside))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "workingDirectory")
    assert message in error["message"]
    assert not Job.objects.exists()


def test_a_working_directory_is_refused_when_the_service_allows_none(
    client_for, owner_key, settings, tmp_path
):
    settings.PROCESS_ALLOWED_WORKDIRS = []
    response = post_workdir(client_for, owner_key, str(tmp_path))
    assert response.json()["error"]["message"].endswith("is not enabled on this service")


# -- processes -----------------------------------------------------------------------------


def test_a_running_process_in_the_seed_shape(client_for, owner_key):
    job = make_process(owner_key)
    job_claim_next()
    data = client_for(owner_key).get(f"{BASE}/processes/{process_id(job)}").json()["data"]
    assert set(data) == {"processId", "status", "createdAt", "startedAt"}
    assert data["status"] == "running"


def test_a_pending_process_has_no_start_yet(client_for, owner_key):
    job = make_process(owner_key)
    data = client_for(owner_key).get(f"{BASE}/processes/{process_id(job)}").json()["data"]
    assert set(data) == {"processId", "status", "createdAt"}
    assert data["status"] == "pending"


def test_a_completed_process_in_the_seed_shape(client_for, owner_key):
    job = finish(make_process(owner_key), stderr="")
    data = client_for(owner_key).get(f"{BASE}/processes/{process_id(job)}").json()["data"]
    assert data["status"] == "completed"
    assert data["durationMs"] == 2000
    assert data["completedAt"].endswith("Z")
    result = data["result"]
    assert result["id"] == process_id(job)
    assert result["userId"] == f"key:{owner_key.row.prefix}"
    assert (result["stdout"], result["stderr"], result["exitCode"]) == ("Recursion is…", "", 0)
    assert result["executedVia"] == "cli"
    assert result["parsedResponse"] == {
        "content": "Recursion is…",
        "usage": {"inputTokens": 15, "outputTokens": 250, "totalTokens": 265},
    }


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED])
def test_other_endings_keep_their_status_and_reason(client_for, owner_key, status):
    job = finish(make_process(owner_key), status=status, result="", exit_code=-15, error_message="why")
    result = client_for(owner_key).get(f"{BASE}/processes/{process_id(job)}").json()["data"]["result"]
    assert (result["status"], result["exitCode"], result["error"]) == (status, -15, "why")
    assert result["parsedResponse"] is None


def test_another_callers_process_and_other_jobs_are_not_found(client_for, owner_key, other_key):
    mine = make_process(owner_key)
    plain_job = job_create(caller=Caller(api_key=owner_key.row), prompt="jobs api", enqueue=False)
    for client, pid in [
        (client_for(other_key), process_id(mine)),
        (client_for(owner_key), process_id(plain_job)),
        (client_for(owner_key), str(mine.pk)),
        (client_for(owner_key), "claude_abc123"),
    ]:
        for method in (client.get, client.delete):
            response = method(f"{BASE}/processes/{pid}")
            assert response.status_code == 404
            assert response.json()["error"] == {"code": "NOT_FOUND", "message": "Process not found"}
    assert Job.objects.get(pk=mine.pk).status == JobStatus.PENDING


def test_cancelling_a_pending_process(client_for, owner_key):
    job = make_process(owner_key)
    response = client_for(owner_key).delete(f"{BASE}/processes/{process_id(job)}")
    assert response.status_code == 200
    assert response.json()["data"] == {
        "message": "Process cancelled successfully",
        "processId": process_id(job),
    }
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_cancelling_a_running_process_asks_its_worker(client_for, owner_key):
    job = make_process(owner_key)
    job_claim_next()
    assert client_for(owner_key).delete(f"{BASE}/processes/{process_id(job)}").status_code == 200
    assert Job.objects.get(pk=job.pk).cancel_requested_at is not None


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancelling_an_ended_process_is_already_completed(client_for, owner_key, status):
    job = finish(make_process(owner_key), status=status)
    response = client_for(owner_key).delete(f"{BASE}/processes/{process_id(job)}")
    assert response.status_code == 400
    body = response.json()
    assert_envelope(body, success=False)
    assert body["error"] == {"code": "PROCESS_ALREADY_COMPLETED", "message": "Process already completed"}


def test_the_list_pages_through_the_callers_processes(client_for, owner_key, other_key):
    jobs = [make_process(owner_key, prompt=f"p{i}") for i in range(25)]
    make_process(other_key)
    job_create(caller=Caller(api_key=owner_key.row), prompt="not a process", enqueue=False)
    client = client_for(owner_key)
    first = client.get(f"{BASE}/processes").json()["data"]
    assert first["total"] == 25
    assert first["pagination"] == {"page": 1, "pageSize": 20, "totalPages": 2}
    second = client.get(f"{BASE}/processes", {"page": 2}).json()["data"]
    ids = [p["processId"] for p in first["processes"] + second["processes"]]
    assert ids == [process_id(j) for j in reversed(jobs)]
    assert len(second["processes"]) == 5
    beyond = client.get(f"{BASE}/processes", {"page": 3}).json()["data"]
    assert beyond["processes"] == [] and beyond["total"] == 25
    small = client.get(f"{BASE}/processes", {"pageSize": 100}).json()["data"]
    assert small["pagination"] == {"page": 1, "pageSize": 100, "totalPages": 1}


def test_the_list_filters_by_every_status(client_for, owner_key):
    pending = make_process(owner_key)
    queued = make_process(owner_key, queued=True)
    done = finish(make_process(owner_key))
    timed_out = finish(make_process(owner_key), status=JobStatus.TIMEOUT)
    client = client_for(owner_key)
    expected = {"pending": [pending], "queued": [queued], "completed": [done], "timeout": [timed_out]}
    for status, jobs in expected.items():
        data = client.get(f"{BASE}/processes", {"status": status}).json()["data"]
        assert [p["processId"] for p in data["processes"]] == [process_id(j) for j in jobs], status
        assert all(p["status"] == status for p in data["processes"])
    empty = client.get(f"{BASE}/processes", {"status": "failed"}).json()["data"]
    assert empty == {"processes": [], "total": 0, "pagination": {"page": 1, "pageSize": 20, "totalPages": 0}}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": "two"}, "page"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 101}, "pageSize"),
        ({"pageSize": "x"}, "pageSize"),
        ({"status": "done"}, "status"),
        ({"status": ""}, "status"),
        ({"page": ""}, "page"),
    ],
)
def test_bad_list_parameters_name_the_field(client_for, owner_key, params, field):
    response = client_for(owner_key).get(f"{BASE}/processes", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field)


# -- health ------------------------------------------------------------------------------


def test_health_needs_no_key_and_reports_the_cli(client_for, settings, live_worker):
    settings.ANTHROPIC_API_KEY = "sk-test"
    settings.MAX_CONCURRENT_PROCESSES = 5
    response = client_for(None).get(f"{BASE}/health")
    assert response.status_code == 200
    body = response.json()
    assert_envelope(body)
    data = body["data"]
    assert data["healthy"] is True
    assert data["cli"]["installed"] is True
    # The version, and the binary's name: never a server path to a caller without a key.
    assert data["cli"]["path"] == "claude" and data["cli"]["version"].count(".") == 2
    assert data["checks"]["database"]["ok"] and data["checks"]["workers"]["live"] == 1
    assert data["apiFallbackAvailable"] is True
    assert (data["activeProcesses"], data["queueSize"], data["maxConcurrentProcesses"]) == (0, 0, 5)


def test_health_counts_running_and_waiting_jobs(client_for, owner_key, live_worker):
    make_process(owner_key)
    make_process(owner_key)
    job_claim_next()
    data = client_for(None).get(f"{BASE}/health").json()["data"]
    assert (data["activeProcesses"], data["queueSize"]) == (1, 1)


def test_health_is_503_when_the_cli_cannot_run_and_there_is_no_fallback(
    client_for, settings, tmp_path, live_worker
):
    settings.CLAUDE_CLI_PATH = str(tmp_path / "no-such-claude")
    settings.ANTHROPIC_API_KEY = ""
    response = client_for(None).get(f"{BASE}/health")
    assert response.status_code == 503
    body = response.json()
    assert body["success"] is False
    assert body["data"]["healthy"] is False
    assert body["data"]["cli"] == {
        "installed": False,
        "path": "no-such-claude",
        "error": "Claude CLI not found at no-such-claude",
    }
    assert str(tmp_path) not in response.content.decode()
    assert body["data"]["apiFallbackAvailable"] is False


def test_health_stays_healthy_on_the_api_fallback(client_for, settings, tmp_path, live_worker):
    settings.CLAUDE_CLI_PATH = str(tmp_path / "no-such-claude")
    settings.ANTHROPIC_API_KEY = "sk-test"
    data = client_for(None).get(f"{BASE}/health").json()["data"]
    assert (data["healthy"], data["cli"]["installed"], data["apiFallbackAvailable"]) == (True, False, True)
    settings.CLAUDE_API_FALLBACK = False
    assert client_for(None).get(f"{BASE}/health").status_code == 503


def test_health_agrees_with_the_service_health_when_no_worker_is_alive(
    client_for, settings, live_worker, monkeypatch
):
    monkeypatch.setattr("claudesvc.health.STARTED", 0.0)  # up for long: no start-up excuse
    settings.ANTHROPIC_API_KEY = "sk-test"
    settings.HEALTH_WORKER_MAX_AGE_SECONDS = 5
    type(live_worker).objects.update(heartbeat_at=timezone.now() - timedelta(seconds=30))
    response = client_for(None).get(f"{BASE}/health")
    assert response.status_code == 503 and client_for(None).get("/health").status_code == 503
    assert response.json()["data"]["checks"]["workers"]["ok"] is False


# -- metrics ---------------------------------------------------------------------------------


def ended_job(key, status, duration_ms, *, ago=timedelta(minutes=1), **fields) -> Job:
    job = make_process(key)
    finish(job, status=status, duration_ms=duration_ms, **fields)
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - ago)
    job.refresh_from_db()
    return job


def test_metrics_count_outcomes_and_give_real_percentiles(client_for, owner_key, other_key, staff_user):
    owner_key.row.owner = staff_user.row  # service-wide totals are for staff
    owner_key.row.save(update_fields=["owner"])
    durations = list(range(100, 2100, 100))  # 20 values, 100 … 2000
    statuses = [JobStatus.COMPLETED] * 16 + [JobStatus.FAILED] * 2 + [JobStatus.TIMEOUT, JobStatus.CANCELLED]
    for status, duration in zip(statuses, durations, strict=True):
        ended_job(owner_key if duration % 200 else other_key, status, duration)
    ended_job(owner_key, JobStatus.COMPLETED, 99_999, ago=timedelta(hours=3))  # outside the period
    make_process(owner_key)
    make_process(owner_key)
    job_claim_next()
    response = client_for(owner_key).get(f"{BASE}/metrics")
    assert response.status_code == 200
    data = response.json()["data"]
    assert "recentMetrics" not in data
    assert data["periodSeconds"] == 3600
    assert (data["totalProcesses"], data["successfulProcesses"], data["failedProcesses"]) == (20, 16, 2)
    assert (data["timedOutProcesses"], data["cancelledProcesses"]) == (1, 1)
    assert (data["activeProcesses"], data["queuedProcesses"]) == (1, 1)
    assert (data["minDurationMs"], data["maxDurationMs"], data["avgDurationMs"]) == (100, 2000, 1050)
    # Linear interpolation between ranks: position 0.95 * 19 = 18.05 -> 1900 + 0.05 * 100.
    assert data["p95DurationMs"] == 1905
    assert data["p99DurationMs"] == 1981
    assert data["successRate"] == 0.8
    # A key that is not staff's sees its own figures only.
    theirs = client_for(other_key).get(f"{BASE}/metrics").json()["data"]
    assert (theirs["totalProcesses"], theirs["activeProcesses"], theirs["queuedProcesses"]) == (10, 0, 0)


def test_metrics_with_recent_processes_list_only_the_callers(client_for, owner_key, other_key):
    mine = ended_job(
        owner_key,
        JobStatus.COMPLETED,
        2100,
        peak_memory_bytes=52_428_800,
        cpu_time_ms=1800,
        result="x" * 1500,
    )
    Job.objects.filter(pk=mine.pk).update(prompt="p" * 240, system_prompt="s" * 10)
    older = ended_job(owner_key, JobStatus.FAILED, 300, ago=timedelta(minutes=5), result="")
    ended_job(other_key, JobStatus.COMPLETED, 500)
    data = (
        client_for(owner_key)
        .get(f"{BASE}/metrics", {"includeRecent": "true", "recentLimit": 10})
        .json()["data"]
    )
    assert data["totalProcesses"] == 2  # its own, not the other key's
    recent = data["recentMetrics"]
    assert [r["processId"] for r in recent] == [process_id(mine), process_id(older)]
    assert recent[0] == {
        "processId": process_id(mine),
        "userId": f"key:{owner_key.row.prefix}",
        "durationMs": 2100,
        "peakMemoryBytes": 52_428_800,
        "cpuTimeMs": 1800,
        "inputSize": 250,
        "outputSize": 1500,
        "success": True,
        "timestamp": recent[0]["timestamp"],
    }
    assert "peakMemoryBytes" not in recent[1] and recent[1]["success"] is False
    limited = client_for(owner_key).get(f"{BASE}/metrics", {"includeRecent": "true", "recentLimit": 1}).json()
    assert len(limited["data"]["recentMetrics"]) == 1


def test_metrics_of_a_quiet_period(client_for, owner_key):
    data = client_for(owner_key).get(f"{BASE}/metrics", {"periodSeconds": 60}).json()["data"]
    assert data["totalProcesses"] == 0 and data["successRate"] is None and data["p99DurationMs"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"periodSeconds": 59}, "periodSeconds"),
        ({"periodSeconds": 86_401}, "periodSeconds"),
        ({"periodSeconds": "hour"}, "periodSeconds"),
        ({"includeRecent": "maybe"}, "includeRecent"),
        ({"recentLimit": 0}, "recentLimit"),
        ({"recentLimit": 1001}, "recentLimit"),
        ({"includeRecent": ""}, "includeRecent"),
        ({"periodSeconds": ""}, "periodSeconds"),
    ],
)
def test_bad_metrics_parameters_name_the_field(client_for, owner_key, params, field):
    response = client_for(owner_key).get(f"{BASE}/metrics", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field)


def test_the_openapi_document_describes_the_process_api(client):
    text = client.get("/openapi.yaml").content.decode()
    for path in [
        "/api/v1/claude/execute:",
        "/api/v1/claude/execute/async:",
        "/api/v1/claude/processes:",
        "/api/v1/claude/processes/{id}:",
        "/api/v1/claude/health:",
        "/api/v1/claude/metrics:",
    ]:
        assert path in text
    assert "/api/v1/claude/ws" in text and "bearer." in text


# -- the waiting execute response ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_waiting_execute_keeps_the_connection_alive_with_valid_json(owner_key, settings):
    import asyncio
    import json

    from asgiref.sync import sync_to_async

    from jobs.process_api.views import _result_when_done

    settings.STREAM_KEEPALIVE_SECONDS = 1
    settings.STREAM_POLL_MS = 50
    job = await sync_to_async(make_process)(owner_key)

    async def finish_later():
        await asyncio.sleep(2.5)
        await sync_to_async(finish)(job)

    finisher = asyncio.create_task(finish_later())
    chunks = [chunk async for chunk in _result_when_done(job.pk, "req_wait")]
    await finisher
    assert chunks[:2] == [b" ", b" "]
    body = json.loads(b"".join(chunks))
    assert body["success"] is True and body["meta"]["requestId"] == "req_wait"
    assert body["data"]["status"] == "completed" and body["data"]["stdout"] == "Recursion is…"


@pytest.mark.django_db(transaction=True)
async def test_a_waiting_execute_reports_a_process_deleted_meanwhile(owner_key, settings):
    import json

    from asgiref.sync import sync_to_async

    from jobs.process_api.views import _result_when_done

    settings.STREAM_POLL_MS = 50
    job = await sync_to_async(make_process)(owner_key)
    await Job.objects.filter(pk=job.pk).adelete()
    body = json.loads(b"".join([chunk async for chunk in _result_when_done(job.pk, "req_gone")]))
    assert body["success"] is False and body["error"]["code"] == "NOT_FOUND"


# -- the answers are what the OpenAPI document says ---------------------------------------------


def _strict(node):
    """An OpenAPI 3.0 schema as JSON Schema that refuses undocumented keys: ``nullable``
    becomes a null alternative and every object with properties is closed."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if "properties" in node:
        node.setdefault("additionalProperties", False)
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture
def conforms(client):
    """Check a response body against the schema the document gives for its route and status."""
    import jsonschema
    import yaml

    document = yaml.safe_load(client.get("/openapi.yaml").content)
    components = _strict(document["components"])

    def check(body: dict, path: str, method: str, status: int) -> None:
        content = document["paths"][path][method]["responses"][str(status)]["content"]
        schema = {**_strict(content["application/json"]["schema"]), "components": components}
        jsonschema.validate(body, schema)

    return check


def test_every_process_answer_is_the_shape_its_schema_documents(client_for, owner_key, conforms, live_worker):
    api = client_for(owner_key)
    health = api.get(f"{BASE}/health")
    conforms(health.json(), "/api/v1/claude/health", "get", health.status_code)
    accepted = api.post(f"{BASE}/execute/async", {"prompt": "hi"}, format="json")
    conforms(accepted.json(), "/api/v1/claude/execute/async", "post", 202)
    pending = Job.objects.get()
    done = finish(make_process(owner_key))
    failed = finish(make_process(owner_key), status=JobStatus.FAILED, error_message="boom", exit_code=1)
    Job.objects.filter(pk=done.pk).update(peak_memory_bytes=1024, cpu_time_ms=5)
    for job in (pending, done, failed):
        body = api.get(f"{BASE}/processes/{process_id(job)}").json()
        conforms(body, "/api/v1/claude/processes/{id}", "get", 200)
    assert "result" not in api.get(f"{BASE}/processes/{process_id(pending)}").json()["data"]
    conforms(api.get(f"{BASE}/processes").json(), "/api/v1/claude/processes", "get", 200)
    metrics = api.get(f"{BASE}/metrics", {"includeRecent": "true"}).json()
    assert len(metrics["data"]["recentMetrics"]) == 2
    conforms(metrics, "/api/v1/claude/metrics", "get", 200)
    conforms(api.get(f"{BASE}/metrics").json(), "/api/v1/claude/metrics", "get", 200)
    cancelled = api.delete(f"{BASE}/processes/{process_id(pending)}").json()
    conforms(cancelled, "/api/v1/claude/processes/{id}", "delete", 200)
    refused = api.delete(f"{BASE}/processes/{process_id(done)}")
    conforms(refused.json(), "/api/v1/claude/processes/{id}", "delete", 400)


def test_a_process_of_a_jwt_user_names_them_as_the_login_does(client, jwt_user):
    job = process_create(caller=Caller(user_id=jwt_user.row.pk), prompt="hi")
    finish(job)
    data = client.get(f"{BASE}/processes/{process_id(job)}", **jwt_user.headers).json()["data"]
    login = client.post(
        "/auth/login", {"username": "demo", "password": jwt_user.password}, "application/json"
    )
    assert data["result"]["userId"] == login.json()["user"]["id"] == "demo"
