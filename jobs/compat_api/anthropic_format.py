"""Answers in Anthropic's Messages format: whole, and as its SSE event sequence.

The stream is what the Anthropic SDK reads: every frame has an ``event:`` line;
``message_start``, then per text block ``content_block_start`` →
``content_block_delta`` … → ``content_block_stop``, then ``message_delta``
(stop reason, cumulative usage) and ``message_stop``, after which the
response ends. A failure after the 200 is an ``event: error`` frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from claudesvc.exceptions import classify
from jobs.compat_api.answers import (
    BlockStart,
    BlockStop,
    Failure,
    Finish,
    MessageStart,
    Piece,
    TextDelta,
    Usage,
)
from jobs.compat_api.errors import anthropic_error_body, failure_error
from jobs.compat_api.openai_format import Reply
from jobs.sse import KEEPALIVE, compact_json, frame
from jobs.streaming import Idle


def message(reply: Reply, finish: Finish) -> dict[str, Any]:
    return {
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": finish.text}],
        "model": reply.model,
        "stop_reason": finish.stop_reason,
        "stop_sequence": finish.stop_sequence,
        "usage": finish.usage.anthropic(),
    }


def _event(name: str, body: dict[str, Any]) -> str:
    return frame(compact_json(body), event=name)


async def events(pieces: AsyncIterator[Piece | Idle], reply: Reply) -> AsyncIterator[str]:
    started = False

    def start(usage: Usage) -> str:
        body = {
            "type": "message_start",
            "message": {
                "id": reply.id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": reply.model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage.anthropic(), "output_tokens": 0},
            },
        }
        return _event("message_start", body)

    async for piece in pieces:
        if isinstance(piece, Idle):
            yield KEEPALIVE
        elif isinstance(piece, MessageStart):
            if not started:
                started = True
                yield start(piece.usage)
        elif isinstance(piece, BlockStart):
            yield _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": piece.index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        elif isinstance(piece, TextDelta):
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": piece.index,
                    "delta": {"type": "text_delta", "text": piece.text},
                },
            )
        elif isinstance(piece, BlockStop):
            yield _event("content_block_stop", {"type": "content_block_stop", "index": piece.index})
        elif isinstance(piece, Finish):
            if not started:
                started = True
                yield start(Usage())
            yield _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": piece.stop_reason, "stop_sequence": piece.stop_sequence},
                    "usage": piece.usage.anthropic(),
                },
            )
            yield _event("message_stop", {"type": "message_stop"})
        elif isinstance(piece, Failure):
            problem = classify(failure_error(piece))
            yield _event("error", anthropic_error_body(problem))
