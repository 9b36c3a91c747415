"""The models the compat API offers, and how many tokens each may write.

``MODEL_OUTPUT_TOKEN_LIMITS`` (settings) holds each model's real output limit
by id or alias prefix. A request's ``max_tokens`` above it (or above the
operator's ``COMPAT_MAX_TOKENS_LIMIT``) is lowered to it rather than refused:
clients send their own defaults (LangChain's ChatAnthropic asks for 64000,
LiteLLM a model's maximum), and the API itself would accept those. The value
used is returned in the ``X-Max-Tokens`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from jobs.services import MODEL_ALIASES

# When the model aliases were introduced here; model lists want a date.
MODELS_CREATED = 1677649963
DISPLAY_NAMES = {
    "haiku": "Claude Haiku (latest)",
    "sonnet": "Claude Sonnet (latest)",
    "opus": "Claude Opus (latest)",
}


def output_limit(model: str) -> int:
    """The most output tokens ``model`` (an alias or a full id) can produce."""
    table = settings.MODEL_OUTPUT_TOKEN_LIMITS
    best = max((prefix for prefix in table if model.startswith(prefix)), key=len, default=None)
    return table[best] if best is not None else min(table.values())


@dataclass(frozen=True)
class MaxTokens:
    value: int
    clamped: bool  # the request asked for more than the model (or the operator) allows


def max_tokens_for(model: str, requested: int | None) -> MaxTokens:
    ceiling = min(output_limit(model), settings.COMPAT_MAX_TOKENS_LIMIT)
    if requested is None:
        return MaxTokens(min(settings.COMPAT_DEFAULT_MAX_TOKENS, ceiling), False)
    return MaxTokens(min(requested, ceiling), requested > ceiling)


def openai_model(name: str) -> dict:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "anthropic"}


def anthropic_model(name: str) -> dict:
    created = datetime.fromtimestamp(MODELS_CREATED, tz=UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": name, "display_name": DISPLAY_NAMES.get(name, name), "created_at": created}


def model_names() -> tuple[str, ...]:
    return MODEL_ALIASES
