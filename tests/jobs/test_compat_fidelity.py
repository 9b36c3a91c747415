"""What released clients send, at the compat API's HTTP surface without a worker:
max_tokens above a model's limit, structured output requests, token counting,
assistant prefill, the model list in each family's shape. (Answers through the
real CLI: tests/e2e/test_compat_fidelity.py.)"""

from __future__ import annotations

import pytest

from jobs.compat_api.catalog import max_tokens_for, output_limit
from jobs.compat_api.token_count import estimate
from jobs.models import Job

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
OK = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    return body["error"]


# -- max_tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("sonnet", 64_000),
        ("claude-sonnet-4-5-20250929", 64_000),
        ("claude-opus-4-1-20250805", 32_000),
        ("claude-sonnet-5-5", 128_000),
        ("claude-sonnet-4-6", 128_000),
        ("claude-3-5-haiku-20241022", 8_192),
        ("claude-unknown-9", 8_192),
    ],
)
def test_each_model_has_its_output_limit(model, limit):
    assert output_limit(model) == limit


def test_max_tokens_is_clamped_to_the_limit_not_refused(settings):
    assert max_tokens_for("sonnet", 64_000).value == 64_000
    assert max_tokens_for("sonnet", 200_000) == max_tokens_for("sonnet", 64_000).__class__(64_000, True)
    assert max_tokens_for("claude-3-haiku-20240307", 64_000).value == 4_096
    assert max_tokens_for("sonnet", None).value == settings.COMPAT_DEFAULT_MAX_TOKENS
    settings.COMPAT_MAX_TOKENS_LIMIT = 1000
    assert max_tokens_for("sonnet", 64_000).value == 1000


@pytest.mark.parametrize(
    ("path", "field"), [(CHAT, "max_tokens"), (CHAT, "max_completion_tokens"), (MESSAGES, "max_tokens")]
)
def test_a_clients_large_default_starts_a_job_with_the_clamped_value(client_for, owner_key, path, field):
    response = client_for(owner_key).post(
        path,
        {"model": "claude-3-5-haiku-20241022", "messages": OK, field: 64_000, "stream": True},
        format="json",
    )
    assert response.status_code == 200
    assert response["X-Max-Tokens"] == "8192"
    assert Job.objects.get().options["max_tokens"] == 8192
    response.close()


# -- structured output: what is refused -----------------------------------------------------


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object", "properties": 3}},
            },
            "response_format.json_schema.schema",
        ),
        ("json", "response_format"),
    ],
)
def test_a_structured_output_request_claude_code_cannot_answer_is_a_400(
    client_for, owner_key, response_format, param
):
    error = error_of(
        client_for(owner_key).post(CHAT, {"messages": OK, "response_format": response_format}, format="json"),
        400,
    )
    assert error["param"] == param and param in error["message"]
    assert not Job.objects.exists()


def test_a_non_object_root_says_why(client_for, owner_key):
    body = {
        "messages": OK,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "string"}},
        },
    }
    assert "tool" in error_of(client_for(owner_key).post(CHAT, body, format="json"), 400)["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "array"}}}},
            "output_config.format.schema",
        ),
        ({"output_format": {"type": "json_schema"}}, "output_format.schema"),
    ],
)
def test_anthropic_output_formats_are_checked(client_for, owner_key, extra, param):
    response = client_for(owner_key).post(
        MESSAGES, {"messages": OK, "max_tokens": 10, **extra}, format="json"
    )
    assert response.status_code == 400 and param in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            CHAT,
            {"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}},
        ),
        (CHAT, {"response_format": {"type": "json_object"}}),
        (
            MESSAGES,
            {
                "max_tokens": 10,
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"},
            },
        ),
        (MESSAGES, {"max_tokens": 10, "output_format": {"type": "json_schema", "schema": SCHEMA}}),
    ],
)
def test_a_schema_goes_to_the_job(client_for, owner_key, path, body):
    response = client_for(owner_key).post(path, {"messages": OK, "stream": True, **body}, format="json")
    assert response.status_code == 200
    schema = Job.objects.get().options["json_schema"]
    assert schema["type"] == "object"
    response.close()


# -- prefill -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_assistant_prefill_is_refused_with_the_reason(client_for, owner_key, path):
    body = {"max_tokens": 10, "messages": [*OK, {"role": "assistant", "content": "{"}]}
    error = error_of(client_for(owner_key).post(path, body, format="json"), 400)
    assert "prefill" in error["message"] and "Claude Code" in error["message"]
    assert not Job.objects.exists()


# -- count_tokens -------------------------------------------------------------------------------


def test_count_tokens_estimates_without_an_anthropic_key(client_for, owner_key, settings):
    settings.ANTHROPIC_API_KEY = ""
    response = client_for(owner_key).post(
        COUNT,
        {"model": "haiku", "system": "Be brief.", "messages": [{"role": "user", "content": "x" * 400}]},
        format="json",
    )
    assert response.status_code == 200
    assert response["X-Token-Count-Source"] == "estimate"
    assert response.json() == {"input_tokens": 103 + 4}  # ceil(409 characters / 4) + 4 per message
    assert not Job.objects.exists()


def test_count_tokens_asks_the_upstream_with_a_key(client_for, owner_key, settings, upstream):
    settings.ANTHROPIC_API_KEY = "test-key"
    settings.ANTHROPIC_BASE_URL = upstream.url
    before = len(upstream.requests)
    response = client_for(owner_key).post(COUNT, {"model": "haiku", "messages": OK}, format="json")
    assert response.status_code == 200 and response["X-Token-Count-Source"] == "upstream"
    assert response.json() == {"input_tokens": 10}
    sent = upstream.requests[before:]
    assert sent[0]["path"].startswith("/v1/messages/count_tokens")
    assert sent[0]["body"]["model"].startswith("claude-") and sent[0]["body"]["messages"] == OK


def test_count_tokens_falls_back_to_the_estimate_when_the_upstream_is_down(client_for, owner_key, settings):
    settings.ANTHROPIC_API_KEY = "test-key"
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    response = client_for(owner_key).post(COUNT, {"model": "haiku", "messages": OK}, format="json")
    assert response.status_code == 200 and response["X-Token-Count-Source"] == "estimate"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "haiku"}, "messages"),
        ({"model": "gpt-4", "messages": OK}, "model"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}],
                    }
                ]
            },
            "source.type",
        ),
    ],
)
def test_count_tokens_refuses_what_messages_refuses(client_for, owner_key, body, needle):
    response = client_for(owner_key).post(COUNT, body, format="json")
    assert response.status_code == 400 and response.json()["type"] == "error"
    assert needle in response.json()["error"]["message"]


def test_the_estimate_counts_files_and_tools():
    request = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "data": "QUJD", "media_type": "image/png"}}
                ],
            }
        ],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    }
    assert estimate(request) > 1600


# -- models ----------------------------------------------------------------------------------------


def test_the_model_list_has_the_anthropic_shape_for_anthropic_clients(client_for, owner_key):
    client = client_for(owner_key)
    body = client.get("/v1/models", HTTP_ANTHROPIC_VERSION="2023-06-01").json()
    assert body["has_more"] is False and body["first_id"] == "haiku" and body["last_id"] == "opus"
    first = body["data"][0]
    assert first["type"] == "model" and first["display_name"] and first["created_at"].endswith("Z")
    one = client.get("/v1/models/sonnet", HTTP_ANTHROPIC_VERSION="2023-06-01").json()
    assert one["type"] == "model" and one["id"] == "sonnet"
    assert client.get("/v1/models").json()["object"] == "list"
