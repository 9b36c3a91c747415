"""What the model's API answered reaches compat clients as that API would have
said it: an upstream 429 is a 429 (retry-after, x-should-retry: true), 529 a
529, 400 a 400, the service's own bad credentials a 401 that says so; each in
its family's error shape, within seconds (the fake upstream tells the CLI not
to retry with ``x-should-retry: false``). And a non-streaming client that
hangs up cancels its job."""

from __future__ import annotations

import socket
import time
import uuid
from urllib.parse import urlparse

import anthropic
import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def job_with(mark: str):
    from jobs.models import Job

    return Job.objects.get(prompt__contains=mark)


@pytest.mark.parametrize(
    ("upstream_status", "status", "openai_type", "anthropic_type", "retry"),
    [
        (429, 429, "rate_limit_error", "rate_limit_error", "true"),
        (529, 529, "overloaded_error", "overloaded_error", "true"),
        (400, 400, "invalid_request_error", "invalid_request_error", "false"),
        (401, 401, "authentication_error", "authentication_error", "false"),
        (500, 502, "api_error", "api_error", "true"),
    ],
)
def test_an_upstream_status_is_answered_in_each_family(
    service, owner_key, upstream_status, status, openai_type, anthropic_type, retry
):
    client = service.client(owner_key)
    mark = marker()
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "haiku",
            "messages": [{"role": "user", "content": f"{mark} [[error:{upstream_status} final]]"}],
        },
    )
    assert time.monotonic() - started < 30
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == openai_type
    assert error["code"].startswith("upstream_")
    assert f"fake upstream {upstream_status}" in error["message"]
    assert response.headers["x-should-retry"] == retry
    assert ("retry-after" in response.headers) == (retry == "true")
    assert job_with(mark).upstream_status == upstream_status
    if upstream_status == 401:
        assert (
            "service's own upstream" in error["message"] and "your API key was accepted" in error["message"]
        )

    response = client.post(
        "/v1/messages",
        headers={"anthropic-version": "2023-06-01"},
        json={
            "model": "haiku",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": f"{mark}b [[error:{upstream_status} final]]"}],
        },
    )
    assert response.status_code == status, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == anthropic_type
    assert response.headers["x-should-retry"] == retry


def test_sdks_raise_their_typed_errors_and_retry_only_what_may_be_retried(service, owner_key):
    from jobs.models import Job

    mark = marker()
    # The SDK retries a 429 (after retry-after seconds): three jobs, then RateLimitError.
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=2, timeout=60)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": f"{mark} [[error:429 final]]"}]
        )
    assert Job.objects.filter(prompt__contains=mark).count() == 3
    with pytest.raises(anthropic.AuthenticationError, match="service's own upstream"):
        anthropic.Anthropic(
            base_url=service.url, api_key=owner_key.secret, max_retries=2, timeout=60
        ).messages.create(
            model="haiku",
            max_tokens=10,
            messages=[{"role": "user", "content": f"{mark}b [[error:401 final]]"}],
        )
    assert Job.objects.filter(prompt__contains=f"{mark}b").count() == 1
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        anthropic.Anthropic(
            base_url=service.url, api_key=owner_key.secret, max_retries=0, timeout=60
        ).messages.create(
            model="haiku",
            max_tokens=10,
            messages=[{"role": "user", "content": f"{mark}c [[error:529 final]]"}],
        )
    assert overloaded.value.status_code == 529


def test_a_stream_that_fails_upstream_sends_the_mapped_error_event(service, owner_key):
    client = anthropic.Anthropic(base_url=service.url, api_key=owner_key.secret, max_retries=0, timeout=60)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded") as failed,
        client.messages.stream(
            model="haiku", max_tokens=10, messages=[{"role": "user", "content": "x [[error:529 final]]"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert failed.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.APIError, match="rate limiting"):
        for _ in openai.OpenAI(
            base_url=f"{service.url}/v1", api_key=owner_key.secret, max_retries=0
        ).chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "x [[error:429 final]]"}], stream=True
        ):
            pass


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_a_non_streaming_client_that_hangs_up_cancels_its_job(service, owner_key, route):
    mark = marker()
    body = {
        "model": "haiku",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": f"{mark} [[slow:0.5]] " + "word " * 40}],
    }
    import json

    payload = json.dumps(body).encode()
    url = urlparse(service.url)
    request = (
        f"POST {route} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nX-API-Key: {owner_key.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the CLI is answering
            try:
                job = job_with(mark)
            except Exception:
                job = None
            if (
                job is not None
                and job.status == "running"
                and job.events.filter(type="stream_event").exists()
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the job did not start streaming")
    # The socket is closed: the server sees the disconnect and cancels the job.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = job_with(mark)
        if job.is_final:
            break
        time.sleep(0.2)
    assert job.status == "cancelled", (job.status, job.error_message)
    assert job.duration_ms is None or job.duration_ms < 20_000  # 40 words at 0.5 s would take 20 s


def test_a_client_that_waits_still_gets_its_answer(service, owner_key):
    response = httpx.post(
        f"{service.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {owner_key.secret}"},
        json={"model": "haiku", "messages": [{"role": "user", "content": "[[reply:still here]]"}]},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "still here"
