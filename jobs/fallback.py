"""Running a job straight against the Anthropic Messages API, for when the
Claude CLI is missing or cannot start.

Part of the runner: ``jobs.runner`` decides when to use it (the job allows it,
an API key is configured, the CLI cannot run) and consumes what ``query_api``
yields exactly as it consumes the CLI's messages. It yields the same
claude-agent-sdk message types (system init, partial stream events, the
assistant message, the result), so every event, status and streaming face
works unchanged. There are no tools on this path: it is one model call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
from claude_agent_sdk import AssistantMessage, ResultMessage, StreamEvent, SystemMessage, TextBlock
from django.conf import settings

from jobs.models import Job

# The full model ids the bundled Claude CLI sends for its aliases; the API
# itself does not know the aliases.
API_MODEL_ALIASES = {
    "haiku": "claude-haiku-5-5",
    "sonnet": "claude-sonnet-5-5",
    "opus": "claude-opus-5-5",
}
# The raw events of the Messages API stream (the SDK's helper also yields
# derived "text"/"input_json" events, which the CLI's partial messages do not have).
_RAW_STREAM_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}
EXECUTED_VIA_API = "api"


def fallback_available() -> bool:
    """Whether a process can run without the CLI: the fallback is on and has a key."""
    return bool(settings.CLAUDE_API_FALLBACK and settings.ANTHROPIC_API_KEY)


def api_model(model: str) -> str:
    return API_MODEL_ALIASES.get(model, model)


def _usage(usage: Any) -> dict[str, Any]:
    data = usage.model_dump(exclude_none=True) if usage is not None else {}
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str))}


async def query_api(job: Job, *, prompt: str) -> AsyncIterator[Any]:
    """The job as one Messages API call, as claude-agent-sdk messages."""
    session_id = str(uuid.uuid4())
    model = api_model(job.model)
    options = job.options or {}
    started = time.monotonic()
    yield SystemMessage(
        subtype="init",
        data={
            "type": "system",
            "subtype": "init",
            "session_id": session_id,
            "model": model,
            "tools": [],
            "executed_via": EXECUTED_VIA_API,
        },
    )
    client = anthropic.AsyncAnthropic(
        api_key=settings.ANTHROPIC_API_KEY,
        base_url=settings.ANTHROPIC_BASE_URL or None,
        timeout=float(job.timeout_seconds),
        max_retries=2,
    )
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": int(options.get("max_tokens") or settings.CLAUDE_API_FALLBACK_MAX_TOKENS),
        "messages": [{"role": "user", "content": prompt}],
    }
    if job.system_prompt:
        request["system"] = job.system_prompt
    try:
        async with client.messages.stream(**request) as stream:
            async for event in stream:
                if options.get("partial_messages") and event.type in _RAW_STREAM_EVENTS:
                    yield StreamEvent(
                        uuid=str(uuid.uuid4()),
                        session_id=session_id,
                        event=event.model_dump(mode="json", exclude_none=True),
                    )
            final = await stream.get_final_message()
    except anthropic.APIStatusError as exc:
        yield _error_result(session_id, started, f"Anthropic API error: {exc.message}", exc.status_code)
        return
    except anthropic.APIError as exc:
        yield _error_result(session_id, started, f"Anthropic API unreachable: {exc}", None)
        return
    finally:
        await client.close()
    text = "".join(block.text for block in final.content if block.type == "text")
    usage = _usage(final.usage)
    yield AssistantMessage(
        content=[TextBlock(text=block.text) for block in final.content if block.type == "text"],
        model=final.model,
        usage=usage,
        message_id=final.id,
        stop_reason=final.stop_reason,
        session_id=session_id,
    )
    elapsed = int((time.monotonic() - started) * 1000)
    yield ResultMessage(
        subtype="success",
        duration_ms=elapsed,
        duration_api_ms=elapsed,
        is_error=False,
        num_turns=1,
        session_id=session_id,
        stop_reason=final.stop_reason,
        usage=usage,
        result=text,
    )


def _error_result(session_id: str, started: float, message: str, status: int | None) -> ResultMessage:
    elapsed = int((time.monotonic() - started) * 1000)
    return ResultMessage(
        subtype="error_during_execution",
        duration_ms=elapsed,
        duration_api_ms=elapsed,
        is_error=True,
        num_turns=1,
        session_id=session_id,
        result=message,
        api_error_status=status,
    )
