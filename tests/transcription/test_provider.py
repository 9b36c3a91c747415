"""The Voxtral client against the fake provider: request shape, retries, backoff, errors."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.fakes.voxtral import random_script, tone_audio
from transcription.provider import ProviderConfig, ProviderError, VoxtralClient, retry_after_seconds


@pytest.fixture
def chunk(tmp_path):
    script = random_script(7, 8, sentence=(4, 4))
    path = tmp_path / "chunk_0000.flac"
    timeline = tone_audio(path, script)
    return path, [s.word for s in timeline]


def client_for(fake, **overrides) -> VoxtralClient:
    config = ProviderConfig(
        base_url=fake.url, model="voxtral-mini-latest", api_key=fake.api_key, backoff=0.02, max_wait=5
    )
    return VoxtralClient(ProviderConfig(**{**config.__dict__, **overrides}))


async def test_it_posts_the_chunk_as_multipart_with_model_language_and_key(voxtral, chunk):
    path, spoken = chunk
    async with client_for(voxtral) as client:
        answer = await client.transcribe(path, language="de")
    request = voxtral.requests[-1]
    assert request.path == "/v1/audio/transcriptions"
    assert request.headers["authorization"] == f"Bearer {voxtral.api_key}"
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert request.fields == {
        "model": "voxtral-mini-latest",
        "language": "de",
        "timestamp_granularities": "segment",
    }
    assert request.filename == "chunk_0000.flac"
    assert request.audio_bytes == path.stat().st_size
    assert [w.strip(".").lower() for w in answer.text.split()] == spoken
    assert answer.segments and answer.segments[0].start >= 0
    assert answer.language == "de"


async def test_without_a_language_none_is_sent_and_the_response_format_is_a_setting(voxtral, chunk):
    async with client_for(voxtral, response_format="verbose_json") as client:
        await client.transcribe(chunk[0])
    assert voxtral.requests[-1].fields == {
        "model": "voxtral-mini-latest",
        "timestamp_granularities": "segment",
        "response_format": "verbose_json",
    }


async def test_an_answer_without_segments_still_has_the_text(voxtral, chunk):
    voxtral.with_segments = False
    async with client_for(voxtral) as client:
        answer = await client.transcribe(chunk[0])
    assert answer.segments == [] and answer.text


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_it_retries_throttling_and_server_errors(voxtral, chunk, status):
    voxtral.fail(status, times=2)
    async with client_for(voxtral) as client:
        answer = await client.transcribe(chunk[0])
    assert answer.text
    assert [r.status for r in voxtral.requests] == [status, status, 200]


async def test_it_waits_as_long_as_retry_after_says(voxtral, chunk):
    voxtral.fail(429, times=1, retry_after="1")
    async with client_for(voxtral) as client:
        await client.transcribe(chunk[0])
    first, second = voxtral.requests
    assert second.received - first.received >= 0.95


def test_retry_after_may_be_an_http_date():
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_seconds(soon) <= 30
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


async def test_retry_after_is_capped(voxtral, chunk):
    voxtral.fail(503, times=1, retry_after="3600")
    started = time.monotonic()
    async with client_for(voxtral, max_wait=1) as client:
        await client.transcribe(chunk[0])
    assert time.monotonic() - started < 10


async def test_it_gives_up_after_the_configured_retries(voxtral, chunk):
    voxtral.fail(503, times=10)
    async with client_for(voxtral, max_retries=2) as client:
        with pytest.raises(ProviderError) as caught:
            await client.transcribe(chunk[0])
    assert len(voxtral.requests) == 3
    assert "HTTP 503" in str(caught.value) and "fake voxtral 503" in str(caught.value)
    assert "3 attempts" in str(caught.value)


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_client_errors_fail_at_once(voxtral, chunk, status):
    voxtral.fail(status, times=1)
    async with client_for(voxtral) as client:
        with pytest.raises(ProviderError, match=f"HTTP {status}"):
            await client.transcribe(chunk[0])
    assert len(voxtral.requests) == 1


async def test_a_wrong_key_fails_at_once_with_the_providers_message(voxtral, chunk):
    async with client_for(voxtral, api_key="wrong") as client:
        with pytest.raises(ProviderError) as caught:
            await client.transcribe(chunk[0])
    assert "HTTP 401" in str(caught.value) and "Unauthorized" in str(caught.value)
    assert len(voxtral.requests) == 1


async def test_an_unreachable_provider_is_retried_then_reported(chunk):
    config = ProviderConfig(
        base_url="http://127.0.0.1:9", model="m", api_key="k", backoff=0.01, max_retries=1
    )
    async with VoxtralClient(config) as client:
        with pytest.raises(ProviderError, match="could not be reached"):
            await client.transcribe(chunk[0])


async def test_a_stopped_job_cancels_requests_in_flight_and_backoff_waits(voxtral, chunk):
    voxtral.delay = lambda rec: 30.0
    async with client_for(voxtral) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.transcribe(chunk[0]), timeout=0.5)
        assert time.monotonic() - started < 3
    voxtral.delay = None
    voxtral.fail(503, times=1, retry_after="30")
    async with client_for(voxtral, max_wait=60) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.transcribe(chunk[0]), timeout=1)
        assert time.monotonic() - started < 3
