"""``POST /v1/messages/count_tokens``: how many input tokens a Messages request is.

With an Anthropic key (``ANTHROPIC_API_KEY``, at ``ANTHROPIC_BASE_URL``) the
service asks the API's own count endpoint, which knows the tokenizer. Without
one, or when that call fails for a reason that is not the request's fault, it
answers a local estimate: ``ceil(characters / 4)`` of every text (system,
messages, tool definitions as JSON) plus 4 per message, plus
``ESTIMATE_TOKENS_PER_FILE`` per image or document block. The
``X-Token-Count-Source`` header says which (``upstream`` or ``estimate``).
Note that the CLI adds its own system prompt and tools to every run, so a
job's real ``input_tokens`` is larger than either count.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import anthropic
from django.conf import settings

from claudesvc.errors import ServiceError
from jobs.fallback import api_model

logger = logging.getLogger(__name__)

# A typical image or PDF page costs about this many tokens (Anthropic: about width*height/750).
ESTIMATE_TOKENS_PER_FILE = 1600
ESTIMATE_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class TokenCount:
    input_tokens: int
    source: str  # "upstream" | "estimate"


def _text_chars(value: Any) -> tuple[int, int]:
    """(characters of text, number of file blocks) in a content value."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = files = 0
        for item in value:
            c, f = _text_chars(item)
            chars, files = chars + c, files + f
        return chars, files
    if isinstance(value, dict):
        if value.get("type") in ("image", "document") and isinstance(value.get("source"), dict):
            source = value["source"]
            if source.get("type") == "text":
                return len(str(source.get("data") or "")), 0
            return 0, 1
        if value.get("type") == "text":
            return len(str(value.get("text") or "")), 0
        return len(json.dumps(value)), 0
    return 0, 0


def estimate(request: dict[str, Any]) -> int:
    chars, files = _text_chars(request.get("system") or "")
    for message in request["messages"]:
        c, f = _text_chars(message.get("content"))
        chars, files = chars + c, files + f
    if request.get("tools"):
        chars += len(json.dumps(request["tools"]))
    return (
        math.ceil(chars / 4)
        + ESTIMATE_TOKENS_PER_MESSAGE * len(request["messages"])
        + ESTIMATE_TOKENS_PER_FILE * files
    )


def count_tokens(request: dict[str, Any]) -> TokenCount:
    """``request``: the validated body (model resolved, messages, optional system and tools)."""
    if not settings.ANTHROPIC_API_KEY:
        return TokenCount(estimate(request), "estimate")
    client = anthropic.Anthropic(
        api_key=settings.ANTHROPIC_API_KEY,
        base_url=settings.ANTHROPIC_BASE_URL or None,
        timeout=settings.COMPAT_COUNT_TOKENS_TIMEOUT_SECONDS,
        max_retries=1,
    )
    body = {k: v for k, v in request.items() if v is not None and k != "model"}
    try:
        counted = client.messages.count_tokens(model=api_model(request["model"]), **body)
    except anthropic.BadRequestError as exc:
        # The request itself is wrong for the API: the caller should hear it.
        message = exc.body.get("error", {}).get("message") if isinstance(exc.body, dict) else None
        raise ServiceError(f"The model's API refused to count this request: {message or exc}") from None
    except anthropic.APIError as exc:
        logger.warning("count_tokens upstream failed (%s); answering an estimate", exc)
        return TokenCount(estimate(request), "estimate")
    return TokenCount(counted.input_tokens, "upstream")
