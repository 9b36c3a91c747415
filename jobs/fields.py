"""Serializer fields of the job core that every API family uses."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from claudesvc.errors import ServiceError
from claudesvc.fields import StrictCharField
from jobs.services import FULL_MODEL_PATTERN, MODEL_ALIASES, resolve_model


@extend_schema_field(
    {
        "type": "string",
        "description": "haiku | sonnet | opus (default: sonnet) or a full Claude model id",
        "anyOf": [{"enum": list(MODEL_ALIASES)}, {"pattern": FULL_MODEL_PATTERN}],
    }
)
class ModelField(StrictCharField):
    """A Claude model: an alias or a full ``claude-…`` id, resolved by ``resolve_model``.

    Optional: absent means ``CLAUDE_DEFAULT_MODEL``. An empty string is refused
    (as the OpenAI and Anthropic APIs refuse it): it is what an unset variable
    sends, and reading it as the default hid that (a session even kept "" as
    its model).
    """

    default_error_messages = {
        "blank": f"May not be empty: use one of {', '.join(MODEL_ALIASES)} or a full Claude model id, "
        "or leave it out for the default."
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", lambda: settings.CLAUDE_DEFAULT_MODEL)
        kwargs.setdefault("help_text", "haiku | sonnet | opus (default: sonnet) or a full Claude model id")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return resolve_model(value)
        except ServiceError as exc:
            raise serializers.ValidationError(exc.message) from exc
