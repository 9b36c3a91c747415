"""Request and response shapes of the compat API (seed 001, plus what the SDKs send)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from claudesvc.auth import owner_label
from claudesvc.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    UtcDateTimeField,
)
from jobs.fields import ModelField

# Claude Code has its own tools; a caller's function definitions cannot be honoured.
UNSUPPORTED = {
    "tools": "tools are not supported: Claude Code works with its own tools",
    "functions": "functions are not supported: Claude Code works with its own tools",
    "tool_choice": "tool_choice is not supported: Claude Code works with its own tools",
}


MAX_TOKENS_HELP = (
    "Most output tokens (default 2048). Above the model's output limit it is lowered to that limit; "
    "the X-Max-Tokens response header says what was used"
)


def _max_tokens(**kwargs) -> StrictIntegerField:
    # No maximum: a value above the model's output limit is lowered to it (catalog.max_tokens_for).
    return StrictIntegerField(required=False, allow_null=True, min_value=1, **kwargs)


class RefusesUnsupported(serializers.Serializer):
    def validate(self, attrs):
        for name, message in UNSUPPORTED.items():
            if self.initial_data.get(name):
                raise serializers.ValidationError({name: message})
        return attrs


# -- OpenAI ---------------------------------------------------------------------------------


class ChatMessageInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = serializers.JSONField(
        help_text="A string, or a list of parts: `{type: text, text}`, `{type: image_url, image_url: {url: "
        "data:…;base64,…}}`, `{type: file, file: {file_data: data:…;base64,…, filename}}`"
    )
    name = StrictCharField(required=False, max_length=256)


class StreamOptionsInput(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class ChatCompletionInput(RefusesUnsupported):
    model = ModelField()
    messages = serializers.ListField(child=ChatMessageInput(), min_length=1)
    max_tokens = _max_tokens(help_text=MAX_TOKENS_HELP)
    max_completion_tokens = _max_tokens(help_text="Same as max_tokens (what newer OpenAI SDKs send)")
    temperature = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=2,
        help_text="Accepted for compatibility; Claude Code has no temperature setting",
    )
    input_format = serializers.ChoiceField(
        choices=["text", "stream-json"],
        default="text",
        help_text="`stream-json` also accepts Anthropic/Claude Code content blocks (`image`, `document`)",
    )
    output_format = serializers.ChoiceField(
        choices=["text", "json", "stream-json"],
        default="json",
        help_text="`json` (chat.completion), `stream-json` (SSE chunks) or `text` (plain text answer)",
    )
    stream = StrictBooleanField(
        required=False, default=False, help_text="SSE chunks, as output_format stream-json"
    )
    stream_options = StreamOptionsInput(required=False, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True, help_text="A string or up to 4 strings")
    user = StrictCharField(required=False, max_length=256, help_text="An end-user id, kept with the job")
    n = StrictIntegerField(required=False, min_value=1, max_value=1, help_text="Only 1 is supported")
    response_format = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": '
        '{"name", "schema"}}` (the root an object schema): the answer is JSON matching it',
    )

    def validate_stop(self, value):
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise serializers.ValidationError("Must be a non-empty string or a list of up to 4 of them.")
        return stops

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if attrs.get("stream") and attrs.get("output_format") == "text":
            raise serializers.ValidationError(
                {"stream": 'stream cannot be combined with output_format "text"'}
            )
        return attrs


class ChatMessageOutput(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    refusal = serializers.CharField(allow_null=True)


class ChoiceOutput(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatMessageOutput()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class OpenAIUsageOutput(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionOutput(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChoiceOutput(many=True)
    usage = OpenAIUsageOutput()


class OpenAIErrorBody(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField()


class OpenAIError(serializers.Serializer):
    error = OpenAIErrorBody()


# -- Anthropic ------------------------------------------------------------------------------


class AnthropicMessageInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.JSONField(
        help_text="A string, or a list of blocks: `{type: text, text}`, `{type: image, source: {type: base64, "
        "media_type, data}}`, `{type: document, source: {type: base64|text, media_type, data}}`"
    )


class MetadataInput(serializers.Serializer):
    user_id = StrictCharField(
        required=False, allow_null=True, help_text="Names the session (after X-Request-ID)"
    )


class MessagesInput(RefusesUnsupported):
    model = ModelField()
    messages = serializers.ListField(child=AnthropicMessageInput(), min_length=1)
    max_tokens = _max_tokens(help_text=MAX_TOKENS_HELP)
    system = serializers.JSONField(
        required=False, allow_null=True, help_text="A string or a list of text blocks"
    )
    temperature = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=1,
        help_text="Accepted for compatibility; Claude Code has no temperature setting",
    )
    stop_sequences = serializers.ListField(
        child=StrictCharField(min_length=1), required=False, allow_null=True, max_length=16
    )
    metadata = MetadataInput(required=False, allow_null=True)
    stream = StrictBooleanField(required=False, default=False)
    output_config = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='`{"format": {"type": "json_schema", "schema": {…}}}`: the answer is JSON matching the schema '
        "(root an object schema); `effort` is accepted and has no effect",
    )
    output_format = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='The older beta form: `{"type": "json_schema", "schema": {…}}`',
    )


class CountTokensInput(serializers.Serializer):
    model = ModelField()
    messages = serializers.ListField(child=AnthropicMessageInput(), min_length=1)
    system = serializers.JSONField(
        required=False, allow_null=True, help_text="A string or a list of text blocks"
    )
    tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        allow_null=True,
        help_text="Counted only: the messages routes refuse tools",
    )


class CountTokensOutput(serializers.Serializer):
    input_tokens = serializers.IntegerField()


class TextBlockOutput(serializers.Serializer):
    type = serializers.CharField(default="text")
    text = serializers.CharField()


class AnthropicUsageOutput(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_creation_input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()


class MessageOutput(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField(default="message")
    role = serializers.CharField(default="assistant")
    content = TextBlockOutput(many=True)
    model = serializers.CharField()
    stop_reason = serializers.ChoiceField(choices=["end_turn", "max_tokens", "stop_sequence"])
    stop_sequence = serializers.CharField(allow_null=True)
    usage = AnthropicUsageOutput()


class AnthropicErrorBody(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField()


class AnthropicError(serializers.Serializer):
    type = serializers.CharField(default="error")
    error = AnthropicErrorBody()


# -- RCA, models, sessions, login ------------------------------------------------------------------


class RcaInput(serializers.Serializer):
    prompt = StrictCharField(max_length=settings.MAX_PROMPT_CHARS, trim_whitespace=False)
    model = ModelField()
    max_tokens = _max_tokens(help_text=MAX_TOKENS_HELP)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.", code="blank")
        return value


class RcaOutput(serializers.Serializer):
    id = serializers.CharField()
    analysis = serializers.CharField()
    model = serializers.CharField()
    created = serializers.IntegerField()
    usage = OpenAIUsageOutput()


class ModelOutput(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListOutput(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelOutput(many=True)


class AnthropicModelOutput(serializers.Serializer):
    type = serializers.CharField(default="model")
    id = serializers.CharField()
    display_name = serializers.CharField()
    created_at = serializers.DateTimeField()


class AnthropicModelListOutput(serializers.Serializer):
    data = AnthropicModelOutput(many=True)
    has_more = serializers.BooleanField()
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)


class SessionCreateInput(serializers.Serializer):
    sessionId = StrictCharField(required=False, help_text="Your name for it; one is made up if omitted")  # noqa: N815
    model = ModelField()


# Renders a ClaudeSession; context["busy"] holds the ids of sessions with a turn waiting or running.
class SessionOutput(serializers.Serializer):
    sessionId = serializers.CharField(source="external_id")  # noqa: N815
    userId = serializers.SerializerMethodField()  # noqa: N815
    model = serializers.CharField()
    createdAt = UtcDateTimeField(source="created_at")  # noqa: N815
    lastActivity = UtcDateTimeField(source="last_activity")  # noqa: N815
    status = serializers.SerializerMethodField()

    def get_userId(self, session) -> str:  # noqa: N802
        return owner_label(api_key=session.api_key, user=session.user)

    @extend_schema_field(serializers.ChoiceField(choices=["active", "busy"]))
    def get_status(self, session) -> str:
        return "busy" if session.pk in self.context.get("busy", ()) else "active"


class SessionListOutput(serializers.Serializer):
    sessions = SessionOutput(many=True)


class SessionDeletedOutput(serializers.Serializer):
    sessionId = serializers.CharField()  # noqa: N815
    deleted = serializers.BooleanField()


class LoginInput(serializers.Serializer):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=1024, trim_whitespace=False)


class LoginUserOutput(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class LoginOutput(serializers.Serializer):
    token = serializers.CharField()
    user = LoginUserOutput()
