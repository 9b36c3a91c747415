"""The speech-to-text provider: Mistral's Voxtral, or any server that speaks the
OpenAI-style ``POST /v1/audio/transcriptions`` (a self-hosted Whisper …).

One request per chunk (multipart: ``file``, ``model``, ``language`` when
known, segment timestamps asked for). 429, 5xx and network failures are retried
with exponential backoff (tenacity), waiting as long as ``Retry-After`` says
when the provider says so; anything else fails at once with the provider's own
message. The client is async so that stopping a job cancels requests in flight
and backoff waits at once, instead of waiting for the provider.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from transcription.stitching import Segment

logger = logging.getLogger(__name__)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"


class ProviderError(Exception):
    """The provider refused or failed; the message is for the caller."""


class RetryableError(ProviderError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str
    model: str
    api_key: str
    response_format: str = ""
    timeout: float = 300
    max_retries: int = 5
    backoff: float = 1.0
    max_wait: float = 60

    @classmethod
    def from_settings(cls) -> ProviderConfig:
        return cls(
            base_url=settings.VOXTRAL_BASE_URL,
            model=settings.VOXTRAL_MODEL,
            api_key=settings.MISTRAL_API_KEY,
            response_format=settings.VOXTRAL_RESPONSE_FORMAT,
            timeout=settings.VOXTRAL_TIMEOUT_SECONDS,
            max_retries=settings.VOXTRAL_MAX_RETRIES,
            backoff=settings.VOXTRAL_RETRY_BACKOFF_MS / 1000,
            max_wait=settings.VOXTRAL_RETRY_MAX_WAIT_SECONDS,
        )


@dataclass(frozen=True)
class ProviderTranscript:
    text: str
    segments: list[Segment]
    language: str = ""


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


class VoxtralClient:
    """One client per job; its chunks are sent concurrently from one event loop."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.http = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 30)),
            headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": "claudesvc-transcription"},
        )
        self._exponential = wait_exponential_jitter(
            multiplier=config.backoff, max=config.max_wait, jitter=config.backoff / 2
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> VoxtralClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.max_wait)
        return self._exponential(state)

    async def transcribe(self, path: Path, *, language: str = "") -> ProviderTranscript:
        audio = path.read_bytes()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.info(
                "transcription of %s: attempt %s failed (%s); retrying", path.name, state.attempt_number, exc
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=self._wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, path.name, audio, language)
        except RetryableError as exc:
            raise ProviderError(f"{exc} (gave up after {self.config.max_retries + 1} attempts)") from exc

    async def _attempt(self, name: str, audio: bytes, language: str) -> ProviderTranscript:
        data: dict[str, Any] = {"model": self.config.model, "timestamp_granularities": "segment"}
        if language:
            data["language"] = language
        if self.config.response_format:
            data["response_format"] = self.config.response_format
        started = time.monotonic()
        try:
            response = await self.http.post(
                TRANSCRIPTIONS_PATH, data=data, files={"file": (name, audio, _mime(name))}
            )
        except httpx.TransportError as exc:
            raise RetryableError(f"the transcription provider could not be reached: {exc!r}") from exc
        logger.info(
            "transcription of %s: HTTP %s in %.1f s", name, response.status_code, time.monotonic() - started
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableError(
                f"the transcription provider answered HTTP {response.status_code}: {_error_text(response)}",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        if response.status_code >= 400:
            raise ProviderError(
                f"the transcription provider refused the request (HTTP {response.status_code}): {_error_text(response)}"
            )
        return parse_transcript(response)


def _mime(name: str) -> str:
    return {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg"}.get(
        Path(name).suffix.lower(), "application/octet-stream"
    )


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:300]
    return str(body)[:300]


def parse_transcript(response: httpx.Response) -> ProviderTranscript:
    try:
        body = response.json()
    except ValueError:
        raise ProviderError("the transcription provider answered with something that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise ProviderError("the transcription provider's answer has no text")
    segments = []
    for raw in body.get("segments") or []:
        try:
            segments.append(Segment(float(raw["start"]), float(raw["end"]), str(raw["text"])))
        except (KeyError, TypeError, ValueError):
            raise ProviderError("the transcription provider's answer has a malformed segment") from None
    return ProviderTranscript(text=body["text"], segments=segments, language=str(body.get("language") or ""))
