"""Serializer fields the three API families share."""

from __future__ import annotations

from datetime import UTC, datetime

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail
from rest_framework.utils import html


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and ``Z``: ``2026-01-10T12:00:02.500Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class UtcDateTimeField(serializers.DateTimeField):
    def to_representation(self, value):
        return iso_utc(value)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that refuses strings, floats and booleans in JSON bodies."""

    default_error_messages = {"not_an_integer": "Must be an integer."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("not_an_integer")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A FloatField that takes JSON numbers only, not strings or booleans."""

    default_error_messages = {"not_a_number": "Must be a number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("not_a_number")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A BooleanField that takes JSON ``true``/``false`` only, not 1, "yes" or "true"."""

    default_error_messages = {"not_a_boolean": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("not_a_boolean")
        return data


class FormOrJsonBooleanField(StrictBooleanField):
    """A boolean as each body writes one: ``true``/``false`` in JSON (``StrictBooleanField``),
    the text ``"true"``/``"false"`` in a form (what the console sends). DRF's own field also
    took 0, 1, "yes" and "on", in JSON too, where the document says boolean."""

    default_error_messages = {"not_a_boolean": 'Must be true or false (in a form: "true" or "false").'}
    FORM_VALUES = {"true": True, "false": False}

    def to_internal_value(self, data):
        # A form without the field arrives as False (DRF's default_empty_html, for checkboxes).
        if isinstance(data, str) and html.is_html_input(self.root.initial_data):
            if data.lower() in self.FORM_VALUES:
                return self.FORM_VALUES[data.lower()]
            self.fail("not_a_boolean")
        return super().to_internal_value(data)


class RefusesEmptyValues(serializers.Serializer):
    """Form-encoded input (a query string, a form body) refuses an optional
    field that is present but empty (``?status=``), naming it.

    DRF reads an empty optional form value as absent, so a filter left empty
    by mistake listed everything and ``?to=`` meant today; the OpenAPI document
    declares no such value. JSON input is left to the fields themselves."""

    empty_message = "May not be empty: give a value or leave the parameter out."

    def to_internal_value(self, data):
        if html.is_html_input(data):
            for name, field in self.fields.items():
                if field.required or field.read_only or getattr(field, "allow_blank", False):
                    continue  # DRF itself refuses or keeps these
                if data.get(name) == "":
                    message = field.error_messages.get("blank", self.empty_message)
                    raise serializers.ValidationError({name: [ErrorDetail(message, code="blank")]})
        return super().to_internal_value(data)
