"""Structured output: OpenAI's ``response_format`` and Anthropic's
``output_config.format`` (and the older beta ``output_format``), honoured
through Claude Code's own structured output.

The CLI's ``--json-schema`` (the Agent SDK's ``output_format``) offers the
model a ``StructuredOutput`` tool whose input schema is the caller's schema,
insists until the model calls it, validates the input, and reports it as the
result's ``structured_output``. The answer's text is then that JSON, checked
once more against the schema here; a run that ends without it is an error that
says so, never free text posing as JSON.

A tool's input is a JSON object, so the schema's root must be an object.
``json_object`` (no schema) asks for any object.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from django.conf import settings

from claudesvc.errors import ServiceError

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def check_schema(schema: Any, field: str) -> dict[str, Any]:
    """The schema if Claude Code can answer with it; a 400 naming ``field`` if not."""
    if not isinstance(schema, dict):
        raise ServiceError(f"{field}: must be a JSON Schema object", field=field)
    if schema.get("type", "object") != "object":
        raise ServiceError(
            f'{field}: the root must be an object schema ("type": "object"): Claude Code returns structured '
            "output as the input of a tool, which is always an object",
            field=field,
        )
    if len(json.dumps(schema)) > settings.MAX_PROMPT_CHARS:
        raise ServiceError(f"{field}: longer than {settings.MAX_PROMPT_CHARS} characters", field=field)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ServiceError(f"{field}: not a valid JSON Schema: {exc.message}", field=field) from None
    return {"type": "object", **schema}


def openai_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema an OpenAI ``response_format`` asks for (None: free text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ServiceError("response_format: must be an object", field="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ServiceError(
                "response_format.json_schema: required (an object with name and schema)",
                field="response_format.json_schema",
            )
        if "schema" not in spec:
            return ANY_OBJECT
        return check_schema(spec["schema"], "response_format.json_schema.schema")
    raise ServiceError(
        f"response_format.type: {kind!r} is not supported (use text, json_object or json_schema)",
        field="response_format.type",
    )


def anthropic_schema(output_config: Any, output_format: Any) -> dict[str, Any] | None:
    """The schema of Anthropic's ``output_config.format`` or beta ``output_format``."""
    where, fmt = "output_format", output_format
    if output_config is not None:
        if not isinstance(output_config, dict):
            raise ServiceError("output_config: must be an object", field="output_config")
        if output_config.get("format") is not None:
            where, fmt = "output_config.format", output_config["format"]
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise ServiceError(f'{where}.type: must be "json_schema"', field=f"{where}.type")
    return check_schema(fmt.get("schema"), f"{where}.schema")


def answer_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` (the run's structured output) is not an answer to ``schema``; None if it is."""
    if value is None:
        return "Claude did not return structured output matching the requested schema."
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"Claude's structured output does not match the requested schema: {exc.message}"
    return None
