"""The Jobs API surface (seed 000): auth, validation, ownership, envelopes."""

import json

import pytest
from asgiref.sync import async_to_sync

from claudesvc.auth import Caller
from jobs.models import Job, JobEvent, JobStatus
from jobs.services import job_create

pytestmark = pytest.mark.django_db


def make_job(key, **kwargs):
    return job_create(
        caller=Caller(api_key=key.row), prompt=kwargs.pop("prompt", "hello"), enqueue=False, **kwargs
    )


# -- auth ----------------------------------------------------------------------


def test_health_needs_no_key(client_for, live_worker):
    body = client_for(None).get("/health").json()
    assert body["status"] == "ok"
    assert body["version"]
    assert body["claude_cli"]


@pytest.mark.parametrize("path", ["/jobs", "/jobs/00000000-0000-0000-0000-000000000000"])
def test_it_refuses_a_missing_key_with_401(client_for, path):
    response = client_for(None).get(path)
    assert response.status_code == 401
    assert response.json() == {
        "success": False,
        "error": {"code": "unauthorized", "message": "API key missing"},
    }


def test_it_refuses_a_bad_key_with_401(client):
    response = client.get("/jobs", HTTP_X_API_KEY="csk_live_" + "x" * 32)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_it_accepts_a_bearer_key(client, owner_key):
    assert client.get("/jobs", HTTP_AUTHORIZATION=f"Bearer {owner_key.secret}").status_code == 200


# -- create ----------------------------------------------------------------------


def test_it_creates_a_pending_job(client_for, owner_key):
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "Explain Docker", "model": "opus"}, format="json"
    )
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] == "pending"
    assert data["stream_url"] == f"/jobs/{data['id']}/stream"
    job = Job.objects.get(pk=data["id"])
    assert (job.model, job.prompt, job.api_key_id) == ("opus", "Explain Docker", owner_key.row.pk)


def test_it_defaults_to_sonnet_and_accepts_full_model_names(client_for, owner_key):
    client = client_for(owner_key)
    first = client.post("/jobs", {"prompt": "a"}, format="json").json()["data"]["id"]
    second = client.post("/jobs", {"prompt": "b", "model": "claude-sonnet-4-20250514"}, format="json")
    assert Job.objects.get(pk=first).model == "sonnet"
    assert Job.objects.get(pk=second.json()["data"]["id"]).model == "claude-sonnet-4-20250514"


def test_it_accepts_form_data(client_for, owner_key):
    response = client_for(owner_key).post("/jobs", {"prompt": "from a form", "model": "haiku"})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"prompt": "hi", "model": "gpt-4"}, "model"),
        ({"prompt": "hi", "model": 3}, "model"),
        ({"prompt": "hi", "model": ""}, "model"),
        ({"prompt": "hi", "partial_messages": 0}, "partial_messages"),
        ({"prompt": "hi", "partial_messages": 1}, "partial_messages"),
        ({"prompt": "hi", "partial_messages": "true"}, "partial_messages"),
        ({"prompt": "hi", "partial_messages": None}, "partial_messages"),
    ],
)
def test_it_names_the_bad_field(client_for, owner_key, body, field):
    response = client_for(owner_key).post("/jobs", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}:")
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"), [({"model": ""}, "model"), ({"partial_messages": ""}, "partial_messages")]
)
def test_an_empty_form_field_is_refused_not_read_as_absent(client_for, owner_key, body, field):
    response = client_for(owner_key).post("/jobs", {"prompt": "from a form", **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    assert error["message"].startswith(f"{field}: May not be empty")
    assert not Job.objects.exists()


@pytest.mark.parametrize(("sent", "stored"), [("true", {"partial_messages": True}), ("false", {})])
def test_a_form_says_partial_messages_as_text(client_for, owner_key, sent, stored):
    response = client_for(owner_key).post("/jobs", {"prompt": "from a form", "partial_messages": sent})
    assert response.status_code == 202
    assert Job.objects.get().options == stored


@pytest.mark.parametrize("sent", ["1", "0", "yes", "on"])
def test_a_form_refuses_other_words_for_partial_messages(client_for, owner_key, sent):
    response = client_for(owner_key).post("/jobs", {"prompt": "from a form", "partial_messages": sent})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "partial_messages")
    assert error["message"] == 'partial_messages: Must be true or false (in a form: "true" or "false").'
    assert not Job.objects.exists()


def test_it_rejects_invalid_json(client_for, owner_key):
    response = client_for(owner_key).post("/jobs", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_it_rejects_a_json_array_body(client_for, owner_key):
    response = client_for(owner_key).post("/jobs", data="[]", content_type="application/json")
    assert response.status_code == 400
    assert not Job.objects.exists()


def test_it_rejects_a_too_long_prompt(client_for, owner_key, settings):
    response = client_for(owner_key).post("/jobs", {"prompt": "x" * 100_001}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "prompt"


# -- read ----------------------------------------------------------------------------


def test_it_lists_only_the_callers_jobs(client_for, owner_key, other_key):
    mine = make_job(owner_key)
    make_job(other_key)
    data = client_for(owner_key).get("/jobs").json()["data"]
    assert [j["id"] for j in data] == [str(mine.pk)]


def test_it_filters_the_list_by_status(client_for, owner_key):
    done = make_job(owner_key)
    Job.objects.filter(pk=done.pk).update(status=JobStatus.COMPLETED)
    make_job(owner_key)
    data = client_for(owner_key).get("/jobs?status=completed").json()["data"]
    assert [j["id"] for j in data] == [str(done.pk)]
    assert client_for(owner_key).get("/jobs?status=bogus").status_code == 400


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=", "status"),
        ("?limit=", "limit"),
        ("/stream?offset=", "offset"),
        ("/stream?limit=", "limit"),
        ("/events?offset=", "offset"),
        ("/events?last_event_id=", "last_event_id"),
    ],
)
def test_an_empty_query_value_is_refused_not_read_as_absent(client_for, owner_key, query, field):
    path = "/jobs" if query.startswith("?") else f"/jobs/{make_job(owner_key).pk}"
    response = client_for(owner_key).get(path + query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    assert error["message"] == f"{field}: May not be empty: give a value or leave the parameter out."


def test_it_shows_a_finished_job_in_the_seed_shape(client_for, owner_key):
    job = make_job(owner_key)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED,
        result="Die Analyse zeigt…",
        duration_ms=1500,
        cost_usd=0.01,
        usage={"input_tokens": 10, "output_tokens": 20},
    )
    data = client_for(owner_key).get(f"/jobs/{job.pk}").json()["data"]
    assert data["status"] == "completed"
    assert data["result"] == "Die Analyse zeigt…"
    assert data["created_at"].endswith("Z")
    assert data["usage"]["output_tokens"] == 20
    assert data["usage"]["cost_usd"] == 0.01


@pytest.mark.parametrize("status", [JobStatus.TIMEOUT, JobStatus.CANCELLED])
def test_it_reports_other_endings_as_failed_with_a_reason(client_for, owner_key, status):
    job = make_job(owner_key)
    Job.objects.filter(pk=job.pk).update(status=status, error_message="why")
    data = client_for(owner_key).get(f"/jobs/{job.pk}").json()["data"]
    assert (data["status"], data["error_message"]) == ("failed", "why")


@pytest.mark.parametrize("suffix", ["", "/stream", "/events"])
def test_another_keys_job_is_not_found(client_for, owner_key, other_key, suffix):
    job = make_job(owner_key)
    response = client_for(other_key).get(f"/jobs/{job.pk}{suffix}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "hello" not in response.content.decode()


async def _read_all(stream) -> bytes:
    return b"".join([chunk async for chunk in stream])


@pytest.mark.parametrize("accept", ["text/event-stream", "*/*", "application/json", None])
def test_events_answer_sse_whatever_accept_says(client_for, owner_key, accept):
    # EventSource, fetch-event-source and Swagger UI send Accept: text/event-stream.
    job = make_job(owner_key)
    JobEvent.objects.create(job=job, seq=0, type="system", data={"type": "system"})
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = client_for(owner_key).get(f"/jobs/{job.pk}/events", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    body = async_to_sync(_read_all)(response.streaming_content).decode()
    assert "id: 0\n" in body and "event: done" in body


def test_events_errors_stay_json_when_sse_is_asked_for(client_for, owner_key, other_key):
    job = make_job(owner_key)
    response = client_for(other_key).get(f"/jobs/{job.pk}/events", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


def test_another_key_cannot_delete(client_for, owner_key, other_key):
    job = make_job(owner_key)
    assert client_for(other_key).delete(f"/jobs/{job.pk}").status_code == 404
    assert Job.objects.filter(pk=job.pk).exists()


def test_a_malformed_id_is_not_found(client_for, owner_key):
    assert client_for(owner_key).get("/jobs/not-a-uuid").status_code == 404


def test_the_stream_pages_by_offset(client_for, owner_key):
    job = make_job(owner_key)
    for seq in range(5):
        JobEvent.objects.create(job=job, seq=seq, type="assistant", data={"type": "assistant", "n": seq})
    client = client_for(owner_key)
    first = client.get(f"/jobs/{job.pk}/stream?offset=0&limit=3").json()["data"]
    assert [e["n"] for e in first["events"]] == [0, 1, 2]
    second = client.get(f"/jobs/{job.pk}/stream?offset={first['next_offset']}").json()["data"]
    assert [e["n"] for e in second["events"]] == [3, 4]
    third = client.get(f"/jobs/{job.pk}/stream?offset={second['next_offset']}").json()["data"]
    assert third == {"status": "pending", "events": [], "next_offset": 5}


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5"])
def test_a_bad_offset_is_refused(client_for, owner_key, offset):
    job = make_job(owner_key)
    response = client_for(owner_key).get(f"/jobs/{job.pk}/stream?offset={offset}")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "offset"


def test_deleting_a_pending_job(client_for, owner_key):
    job = make_job(owner_key)
    JobEvent.objects.create(job=job, seq=0, type="x", data={})
    response = client_for(owner_key).delete(f"/jobs/{job.pk}")
    assert response.json() == {"success": True, "message": "Job deleted"}
    assert not Job.objects.filter(pk=job.pk).exists()
    assert not JobEvent.objects.exists()


def test_unknown_routes_answer_json_404(client_for, owner_key):
    response = client_for(owner_key).get("/nope")
    assert response.status_code == 404
    assert json.loads(response.content)["success"] is False


# -- docs --------------------------------------------------------------------------------


def test_the_landing_page_shows_status_and_endpoints(client):
    page = client.get("/").content.decode()
    assert "Claude Microservice" in page
    assert "Service Online" in page
    assert "POST /jobs" in page


def test_the_openapi_document_describes_the_jobs_api(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    text = response.content.decode()
    for path in ["/jobs:", "/jobs/{job_id}:", "/jobs/{job_id}/stream:", "/jobs/{job_id}/events:", "/health:"]:
        assert path in text


def test_the_openapi_document_validates_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_the_docs_page_renders_offline(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.content.decode()
