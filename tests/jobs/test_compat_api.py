"""The compat API's HTTP surface without a worker: input checking and error shapes
per family, models, sessions, login and JWT. (Answers are tested end to end
with the official SDKs in tests/e2e/test_compat_sdks.py.)"""

from __future__ import annotations

import time

import jwt
import pytest

from claudesvc.auth import jwt_issue
from claudesvc.errors import ServiceError
from jobs.models import ClaudeSession, Job, JobStatus
from jobs.services import job_create
from jobs.sessions import session_for_call

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RCA = "/api/rca"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def assert_nothing_left():
    assert Job.objects.count() == 0
    assert ClaudeSession.objects.count() == 0


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def anthropic_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


# -- OpenAI: bad input -----------------------------------------------------------------------


def test_missing_messages_is_the_seeds_error(client_for, owner_key):
    error = openai_error(client_for(owner_key).post(CHAT, {"model": "sonnet"}, format="json"), 400)
    assert error == {
        "message": "messages array is required",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "missing_messages",
    }
    assert_nothing_left()


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": []}, "messages", "missing_messages"),
        ({"messages": "hello"}, "messages", "invalid_value"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "invalid_value"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "invalid_value"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content", "invalid_request"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role", "prefill_not_supported"),
        ({"messages": OK_MESSAGES, "model": "gpt-4o"}, "model", "invalid_value"),
        ({"messages": OK_MESSAGES, "model": 3}, "model", "invalid_value"),
        ({"messages": OK_MESSAGES, "model": ""}, "model", "missing_model"),
        ({"messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"messages": OK_MESSAGES, "max_tokens": "100"}, "max_tokens", "invalid_value"),
        ({"messages": OK_MESSAGES, "max_tokens": 1.5}, "max_tokens", "invalid_value"),
        ({"messages": OK_MESSAGES, "max_completion_tokens": -1}, "max_completion_tokens", "invalid_value"),
        ({"messages": OK_MESSAGES, "temperature": 2.5}, "temperature", "invalid_value"),
        ({"messages": OK_MESSAGES, "temperature": "hot"}, "temperature", "invalid_value"),
        ({"messages": OK_MESSAGES, "temperature": True}, "temperature", "invalid_value"),
        ({"messages": OK_MESSAGES, "output_format": "xml"}, "output_format", "invalid_value"),
        ({"messages": OK_MESSAGES, "input_format": "yaml"}, "input_format", "invalid_value"),
        ({"messages": OK_MESSAGES, "stream": "yes"}, "stream", "invalid_value"),
        ({"messages": OK_MESSAGES, "stream": True, "output_format": "text"}, "stream", "invalid_value"),
        (
            {"messages": OK_MESSAGES, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "invalid_value",
        ),
        ({"messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"messages": OK_MESSAGES, "stop": [""]}, "stop", "invalid_value"),
        ({"messages": OK_MESSAGES, "stop": 5}, "stop", "invalid_value"),
        ({"messages": OK_MESSAGES, "n": 2}, "n", "invalid_value"),
        ({"messages": OK_MESSAGES, "user": 12}, "user", "invalid_value"),
        ({"messages": OK_MESSAGES, "tools": [{"type": "function"}]}, "tools", "invalid_value"),
        (
            {"messages": OK_MESSAGES, "response_format": {"type": "xml"}},
            "response_format.type",
            "invalid_request",
        ),
    ],
)
def test_bad_chat_input_names_the_field(client_for, owner_key, body, param, code):
    error = openai_error(client_for(owner_key).post(CHAT, body, format="json"), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert param in error["message"]
    assert_nothing_left()


def test_a_bad_session_id_header_is_refused(client_for, owner_key):
    response = client_for(owner_key).post(
        CHAT, {"messages": OK_MESSAGES}, format="json", HTTP_X_REQUEST_ID="has spaces/and slashes"
    )
    assert openai_error(response, 400)["param"] == "X-Request-ID"
    assert_nothing_left()


def test_malformed_json_is_refused(client_for, owner_key):
    response = client_for(owner_key).generic("POST", CHAT, "{not json", content_type="application/json")
    assert openai_error(response, 400)["code"] == "invalid_json"


def test_a_json_array_body_is_refused(client_for, owner_key):
    response = client_for(owner_key).post(CHAT, [1, 2], format="json")
    assert openai_error(response, 400)["type"] == "invalid_request_error"


def test_other_methods_are_refused_in_the_openai_shape(client_for, owner_key):
    assert openai_error(client_for(owner_key).get(CHAT), 405)["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
def test_an_sse_accept_header_is_not_refused(client_for, owner_key, path):
    # Streaming clients send Accept: text/event-stream; a 406 would stop them before validation.
    response = client_for(owner_key).post(
        path, {"model": "sonnet"}, format="json", HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert "messages" in response.content.decode()


# -- Anthropic: bad input --------------------------------------------------------------------


def test_anthropic_missing_messages(client_for, owner_key):
    error = anthropic_error(client_for(owner_key).post(MESSAGES, {"max_tokens": 10}, format="json"), 400)
    assert error == {"type": "invalid_request_error", "message": "messages array is required"}
    assert_nothing_left()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
        ({"messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": OK_MESSAGES, "temperature": 1.5}, "temperature"),
        ({"messages": OK_MESSAGES, "system": 12}, "system"),
        ({"messages": OK_MESSAGES, "stop_sequences": "END"}, "stop_sequences"),
        ({"messages": OK_MESSAGES, "stop_sequences": [""]}, "stop_sequences[0]"),
        ({"messages": OK_MESSAGES, "metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"messages": OK_MESSAGES, "metadata": {"user_id": "bad id!"}}, "metadata.user_id"),
        ({"messages": OK_MESSAGES, "metadata": "x"}, "metadata"),
        ({"messages": OK_MESSAGES, "stream": "true"}, "stream"),
        ({"messages": OK_MESSAGES, "model": "claude"}, "model"),
        ({"messages": OK_MESSAGES, "model": ""}, "model"),
        ({"messages": OK_MESSAGES, "tools": [{"name": "x"}]}, "tools"),
    ],
)
def test_bad_messages_input_names_the_field(client_for, owner_key, body, field):
    error = anthropic_error(client_for(owner_key).post(MESSAGES, body, format="json"), 400)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(field), error
    assert_nothing_left()


def test_too_large_inline_files_are_413_request_too_large(client_for, owner_key, settings):
    settings.COMPAT_MAX_INLINE_FILE_BYTES = 1024
    block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x" * 2000}}
    body = {"messages": [{"role": "user", "content": [block]}]}
    assert anthropic_error(client_for(owner_key).post(MESSAGES, body, format="json"), 413)["type"] == (
        "request_too_large"
    )
    assert_nothing_left()


# -- RCA -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "prompt", "missing_prompt"),
        ({"prompt": "  "}, "prompt", "missing_prompt"),
        ({"prompt": 5}, "prompt", "invalid_value"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"prompt": "x", "temperature": 3}, "temperature", "invalid_value"),
        ({"prompt": "x", "model": "llama"}, "model", "invalid_value"),
        ({"prompt": "x", "model": ""}, "model", "missing_model"),
    ],
)
def test_bad_rca_input_names_the_field(client_for, owner_key, body, param, code):
    error = openai_error(client_for(owner_key).post(RCA, body, format="json"), 400)
    assert (error["param"], error["code"]) == (param, code)
    assert_nothing_left()


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RCA, "/v1/sessions"])
def test_openai_routes_refuse_a_missing_key_with_401(client_for, path):
    error = openai_error(client_for(None).post(path, {}, format="json"), 401)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


def test_messages_refuses_a_bad_key_in_the_anthropic_shape(client):
    response = client.post(
        MESSAGES, {"messages": OK_MESSAGES}, content_type="application/json", HTTP_X_API_KEY="nope"
    )
    assert anthropic_error(response, 401)["type"] == "authentication_error"


def test_models_needs_a_key_and_lists_every_alias(client_for, owner_key):
    assert client_for(None).get("/v1/models").status_code == 401
    body = client_for(owner_key).get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["haiku", "sonnet", "opus"]
    assert all(m["object"] == "model" and m["owned_by"] == "anthropic" and m["created"] for m in body["data"])


def test_a_model_can_be_retrieved_and_an_unknown_one_is_404(client_for, owner_key):
    client = client_for(owner_key)
    assert client.get("/v1/models/opus").json()["id"] == "opus"
    assert openai_error(client.get("/v1/models/gpt-4o"), 404)["code"] == "model_not_found"


def test_login_answers_a_token_and_the_user(client, jwt_user):
    response = client.post(
        "/auth/login", {"username": "demo", "password": "demo-pass-123"}, content_type="application/json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == {"id": "demo", "name": "Demo User"}
    assert jwt.decode(body["token"], options={"verify_signature": False})["sub"] == str(jwt_user.row.pk)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"username": "demo", "password": "wrong"}, 401, None),
        ({"username": "nobody", "password": "demo-pass-123"}, 401, None),
        ({"username": "demo"}, 400, "password"),
        ({"password": "x"}, 400, "username"),
        ({"username": 1, "password": "x"}, 400, "username"),
    ],
)
def test_login_refuses_bad_credentials(client, jwt_user, body, status, param):
    error = openai_error(client.post("/auth/login", body, content_type="application/json"), status)
    assert error["param"] == param
    if status == 401:
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_credentials")


def test_login_refuses_an_inactive_user(client, jwt_user):
    jwt_user.row.is_active = False
    jwt_user.row.save()
    response = client.post(
        "/auth/login", {"username": "demo", "password": "demo-pass-123"}, content_type="application/json"
    )
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/jobs", "/v1/models", "/v1/sessions"])
def test_a_jwt_works_on_every_family(client, jwt_user, path):
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {jwt_issue(jwt_user.row)}")
    assert response.status_code == 200, response.content


def test_a_jwt_callers_jobs_are_theirs_alone(client, jwt_user, owner_key, client_for):
    token = jwt_issue(jwt_user.row)
    created = client.post(
        "/jobs", {"prompt": "mine"}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert created.status_code == 202
    job = Job.objects.get()
    assert job.user_id == jwt_user.row.pk and job.api_key is None
    assert client_for(owner_key).get(f"/jobs/{job.pk}").status_code == 404


def _forged(claims: dict, key: str) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.mark.parametrize(
    "token",
    [
        lambda u, s: _forged(
            {"sub": str(u.pk), "iss": "claudesvc", "iat": 1, "exp": int(time.time()) - 10}, s
        ),
        lambda u, s: _forged(
            {"sub": str(u.pk), "iss": "claudesvc", "iat": 1, "exp": int(time.time()) + 99},
            "another-signing-key-of-32-bytes!",
        ),
        lambda u, s: _forged({"sub": str(u.pk), "iss": "claudesvc", "iat": 1}, s),
        lambda u, s: _forged(
            {"sub": "999999", "iss": "claudesvc", "iat": 1, "exp": int(time.time()) + 99}, s
        ),
        lambda u, s: _forged({"sub": str(u.pk), "iss": "other", "iat": 1, "exp": int(time.time()) + 99}, s),
        lambda u, s: jwt.encode(
            {"sub": str(u.pk), "iss": "claudesvc", "iat": 1, "exp": int(time.time()) + 99},
            None,
            algorithm="none",
        ),
        lambda u, s: "not.a.jwt",
    ],
    ids=["expired", "wrong-key", "no-exp", "no-such-user", "wrong-issuer", "alg-none", "garbage"],
)
def test_a_bad_jwt_is_401_in_each_familys_shape(client, jwt_user, settings, token):
    value = token(jwt_user.row, settings.JWT_SIGNING_KEY)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {value}"}
    assert client.get("/jobs", **headers).json()["error"]["code"] == "unauthorized"
    assert openai_error(client.get("/v1/models", **headers), 401)["type"] == "authentication_error"
    response = client.post(MESSAGES, {"messages": OK_MESSAGES}, content_type="application/json", **headers)
    assert anthropic_error(response, 401)["type"] == "authentication_error"


def test_a_jwt_of_a_deactivated_user_stops_working(client, jwt_user):
    token = jwt_issue(jwt_user.row)
    jwt_user.row.is_active = False
    jwt_user.row.save()
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


def test_the_token_lifetime_is_a_setting(jwt_user, settings):
    settings.JWT_EXPIRY_SECONDS = 120
    claims = jwt.decode(jwt_issue(jwt_user.row), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


# -- sessions --------------------------------------------------------------------------------


def test_sessions_are_listed_in_the_seed_shape(client_for, owner_key):
    client = client_for(owner_key)
    created = client.post(
        "/v1/sessions", {"sessionId": "user-123-1734185905", "model": "haiku"}, format="json"
    )
    assert created.status_code == 201
    [session] = client.get("/v1/sessions").json()["sessions"]
    assert session == created.json()
    assert set(session) == {"sessionId", "userId", "model", "createdAt", "lastActivity", "status"}
    assert session["sessionId"] == "user-123-1734185905" and session["model"] == "haiku"
    assert session["status"] == "active" and session["userId"] == f"key:{owner_key.row.prefix}"
    assert session["createdAt"].endswith("Z")


def test_a_jwt_users_sessions_name_them_as_the_login_does(client, jwt_user):
    created = client.post(
        "/v1/sessions", {"model": "haiku"}, content_type="application/json", **jwt_user.headers
    )
    assert created.status_code == 201 and created.json()["userId"] == "demo"  # seed 001's "userId": "demo"


def test_a_turn_that_cannot_start_leaves_no_session_behind(owner_key, monkeypatch):
    from claudesvc.auth import Caller
    from jobs.compat_api import services
    from jobs.compat_api.conversation import openai_conversation

    def refuse(**kwargs):
        raise ServiceError("Too many active jobs", status=429, code="active_jobs_limit")

    monkeypatch.setattr(services, "job_create", refuse)
    with pytest.raises(ServiceError):
        services.compat_turn_create(
            caller=Caller(api_key=owner_key.row),
            conversation=openai_conversation(OK_MESSAGES),
            model="haiku",
            max_tokens=None,
            session_key="new-session",
            extra={},
        )
    assert_nothing_left()


def test_a_session_without_a_name_gets_one(client_for, owner_key):
    body = client_for(owner_key).post("/v1/sessions", {}, format="json").json()
    assert body["sessionId"].startswith("sess_") and body["model"] == "sonnet"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"sessionId": "a b"}, "sessionId"),
        ({"sessionId": 5}, "sessionId"),
        ({"model": "x"}, "model"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_session_input_names_the_field(client_for, owner_key, body, param):
    assert (
        openai_error(client_for(owner_key).post("/v1/sessions", body, format="json"), 400)["param"] == param
    )
    assert_nothing_left()


def test_a_session_name_is_taken_once_per_caller(client_for, owner_key, other_key):
    assert client_for(owner_key).post("/v1/sessions", {"sessionId": "s1"}, format="json").status_code == 201
    error = openai_error(client_for(owner_key).post("/v1/sessions", {"sessionId": "s1"}, format="json"), 409)
    assert error["code"] == "session_exists"
    # Another caller may use the same name: it is another session.
    assert client_for(other_key).post("/v1/sessions", {"sessionId": "s1"}, format="json").status_code == 201
    assert ClaudeSession.objects.filter(external_id="s1").count() == 2


def test_another_callers_session_is_not_found(client_for, owner_key, other_key):
    client_for(owner_key).post("/v1/sessions", {"sessionId": "private"}, format="json")
    other = client_for(other_key)
    assert other.get("/v1/sessions").json() == {"sessions": []}
    assert openai_error(other.get("/v1/sessions/private"), 404)["type"] == "not_found_error"
    assert openai_error(other.delete("/v1/sessions/private"), 404)["type"] == "not_found_error"
    assert ClaudeSession.objects.filter(external_id="private").exists()


def test_a_session_with_a_waiting_turn_is_busy_and_deleting_it_cancels_the_turn(
    client_for, owner_key, tmp_path
):
    from claudesvc.auth import Caller

    caller = Caller(api_key=owner_key.row)
    session = session_for_call(caller=caller, external_id="work", model="sonnet")
    job = job_create(caller=caller, prompt="hi", session=session, enqueue=False)
    cwd = tmp_path / "jobs" / "sessions" / str(session.pk)
    (cwd / "out").mkdir(parents=True)
    client = client_for(owner_key)
    assert client.get("/v1/sessions/work").json()["status"] == "busy"
    assert client.delete("/v1/sessions/work").json() == {"sessionId": "work", "deleted": True}
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.session_id is None
    assert not cwd.exists()
    assert openai_error(client.get("/v1/sessions/work"), 404)["code"] == "not_found"


# -- shared routes ---------------------------------------------------------------------------


def test_health_has_the_seed_001_fields_too(client_for, live_worker):
    body = client_for(None).get("/health").json()
    assert body["status"] == "ok" and body["claude_cli"]
    assert body["timestamp"].endswith("Z") and isinstance(body["uptime"], float) and body["uptime"] >= 0


def test_unknown_routes_answer_404_in_each_familys_shape(client_for, owner_key):
    client = client_for(owner_key)
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/messages/batches").json()["type"] == "error"
    assert client.get("/nothing").json()["success"] is False


def test_the_openapi_document_describes_the_compat_api_and_jwt(client):
    schema = client.get("/openapi.yaml").content.decode()
    for path in [
        "/v1/chat/completions:",
        "/v1/messages:",
        "/api/rca:",
        "/v1/models:",
        "/v1/sessions:",
        "/auth/login:",
    ]:
        assert path in schema
    assert "JwtBearer" in schema and "bearerFormat: JWT" in schema


def test_a_body_over_the_size_limit_is_413_not_a_crash(client_for, owner_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"messages": [{"role": "user", "content": "x" * 5000}]}
    error = openai_error(client_for(owner_key).post(CHAT, body, format="json"), 413)
    assert error["code"] == "request_too_large"
    assert anthropic_error(client_for(owner_key).post(MESSAGES, body, format="json"), 413)["type"] == (
        "request_too_large"
    )
    assert_nothing_left()


def test_form_bodies_are_refused_with_415(client_for, owner_key):
    response = client_for(owner_key).post(CHAT, {"messages": "x"})
    assert openai_error(response, 415)["code"] == "unsupported_media_type"
    assert_nothing_left()


# -- rate limits (seed 001) -----------------------------------------------------------------


@pytest.fixture
def _fresh_rate_counters():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def test_a_rate_limit_reads_as_the_seed_says_on_openai_routes():
    from rest_framework.exceptions import Throttled

    from jobs.compat_api.errors import openai_exception_handler

    response = openai_exception_handler(Throttled(wait=42), {})
    assert response.status_code == 429
    assert response.data == {
        "error": {
            "message": "Too many requests, please try again later",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert response["Retry-After"] == "42"


def test_a_rate_limit_is_a_rate_limit_error_on_the_anthropic_route():
    from rest_framework.exceptions import Throttled

    from jobs.compat_api.errors import anthropic_exception_handler

    response = anthropic_exception_handler(Throttled(wait=7), {})
    assert response.status_code == 429
    assert response.data == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Too many requests, please try again later"},
    }
    assert response["Retry-After"] == "7"


@pytest.mark.usefixtures("_fresh_rate_counters")
def test_compat_routes_carry_the_seed_headers_and_refuse_past_the_limit(client_for, owner_key):
    from apikeys.models import RateLimitOverride

    client = client_for(owner_key)
    first = client.get("/v1/models")
    assert first["RateLimit-Policy"] == "60;w=60"
    assert (first["RateLimit-Limit"], first["RateLimit-Remaining"]) == ("60", "59")
    assert 1 <= int(first["RateLimit-Reset"]) <= 60
    assert "X-RateLimit-Limit" not in first
    RateLimitOverride.objects.create(api_key=owner_key.row, group="compat", requests=1, window_seconds=60)
    client.get("/v1/models")
    refused = client.post("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused["RateLimit-Remaining"] == "0"
    assert not Job.objects.exists()
