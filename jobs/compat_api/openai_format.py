"""Answers in OpenAI's chat completion format: whole, and as ``chat.completion.chunk`` SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from claudesvc.exceptions import classify
from jobs.compat_api.answers import (
    BlockStart,
    Failure,
    Finish,
    MessageStart,
    Piece,
    TextDelta,
)
from jobs.compat_api.errors import ClaudeExecutionError, failure_error, openai_error_body
from jobs.sse import KEEPALIVE, compact_json, frame
from jobs.streaming import Idle

# The end of an OpenAI stream: not JSON, the SDK stops reading at it.
DONE = frame("[DONE]")


@dataclass(frozen=True)
class Reply:
    """What every part of one answer repeats."""

    id: str
    created: int
    model: str


def completion(reply: Reply, finish: Finish) -> dict[str, Any]:
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": finish.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish.finish_reason,
            }
        ],
        "usage": finish.usage.openai(),
    }


def rca(reply: Reply, finish: Finish) -> dict[str, Any]:
    return {
        "id": reply.id,
        "analysis": finish.text,
        "model": reply.model,
        "created": reply.created,
        "usage": finish.usage.openai(),
    }


def _frame(body: dict[str, Any]) -> str:
    return frame(compact_json(body))


async def chunks(
    pieces: AsyncIterator[Piece | Idle], reply: Reply, *, include_usage: bool
) -> AsyncIterator[str]:
    """SSE ``data:`` frames: a role delta first, text deltas as generated, the finish
    reason, the usage chunk if asked for (``choices: []``), then ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body: dict[str, Any] = {
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return _frame(body)

    role_sent = False
    wrote_text = False
    separate = False
    async for piece in pieces:
        if isinstance(piece, Idle):
            yield KEEPALIVE
        elif isinstance(piece, MessageStart) and not role_sent:
            role_sent = True
            yield chunk({"role": "assistant", "content": ""})
        elif isinstance(piece, BlockStart):
            # Text of the model's next step (after a tool call) starts a new paragraph.
            separate = wrote_text
        elif isinstance(piece, TextDelta):
            text = f"\n\n{piece.text}" if separate else piece.text
            separate, wrote_text = False, True
            if not role_sent:
                role_sent = True
                yield chunk({"role": "assistant", "content": text})
            else:
                yield chunk({"content": text})
        elif isinstance(piece, Finish):
            if not role_sent:
                yield chunk({"role": "assistant", "content": ""})
            yield chunk({}, piece.finish_reason)
            if include_usage:
                yield _frame(
                    {
                        "id": reply.id,
                        "object": "chat.completion.chunk",
                        "created": reply.created,
                        "model": reply.model,
                        "choices": [],
                        "usage": piece.usage.openai(),
                    }
                )
            yield DONE
        elif isinstance(piece, Failure):
            error = failure_error(piece)
            yield _frame(
                openai_error_body(classify(error), execution=isinstance(error, ClaudeExecutionError))
            )
            yield DONE
