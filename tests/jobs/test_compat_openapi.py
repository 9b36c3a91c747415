"""The OpenAPI document says what the service accepts and returns (what generated
clients rely on), and POST /jobs refuses multipart parts it would otherwise drop."""

from __future__ import annotations

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def document(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def schema_of(document, name):
    return document["components"]["schemas"][name]


def test_timestamps_of_unfinished_jobs_are_nullable(document):
    job = schema_of(document, "JobOutput")["properties"]
    assert job["started_at"]["nullable"] is True and job["finished_at"]["nullable"] is True


def test_streams_are_text_event_stream(document):
    for path in ("/jobs/{job_id}/events",):
        assert "text/event-stream" in document["paths"][path]["get"]["responses"]["200"]["content"]
    for path in ("/v1/chat/completions", "/v1/messages"):
        assert "text/event-stream" in document["paths"][path]["post"]["responses"]["200"]["content"]


def test_execute_offers_only_json(document):
    for path in ("/api/v1/claude/execute", "/api/v1/claude/execute/async"):
        assert list(document["paths"][path]["post"]["requestBody"]["content"]) == ["application/json"]


def test_model_is_an_enum_of_aliases_or_a_claude_id_and_messages_need_one(document):
    chat = schema_of(document, "ChatCompletionInputRequest")["properties"]
    assert chat["model"]["anyOf"][0]["enum"] == ["haiku", "sonnet", "opus"]
    assert chat["model"]["anyOf"][1]["pattern"].startswith("^claude-")
    assert chat["messages"]["minItems"] == 1
    assert schema_of(document, "MessagesInputRequest")["properties"]["messages"]["minItems"] == 1


def test_a_form_body_to_execute_is_refused_as_unsupported(client_for, owner_key):
    response = client_for(owner_key).post("/api/v1/claude/execute", {"prompt": "hi", "timeout": "10"})
    assert response.status_code == 415
    assert not Job.objects.exists()


def test_attachment_parts_without_a_filename_are_refused_by_name(client_for, owner_key):
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "hi", "attachments[]": ["not a file", "neither"]}, format="multipart"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "attachments[]" and "filename" in error["message"]
    assert not Job.objects.exists()


def test_unknown_form_fields_are_refused_by_name(client_for, owner_key):
    upload = SimpleUploadedFile("a.txt", b"hello", content_type="text/plain")
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "hi", "promt": "typo", "attachments[]": [upload]}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "promt" and "promt" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_every_documented_form_field_is_accepted(client_for, owner_key):
    # What the console sends: a form with partial_messages beside the prompt and a file.
    upload = SimpleUploadedFile("a.txt", b"hello", content_type="text/plain")
    response = client_for(owner_key).post(
        "/jobs",
        {"prompt": "hi", "model": "haiku", "partial_messages": "true", "attachments[]": [upload]},
        format="multipart",
    )
    assert response.status_code == 202, response.json()
    assert Job.objects.get().options["partial_messages"] is True
