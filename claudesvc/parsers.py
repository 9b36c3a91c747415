"""JSON request bodies with a bounded nesting depth.

Python's JSON decoder recurses once per level: a body of 100 000 ``[`` is a
``RecursionError`` (a 500) in the parser, and a few hundred levels still reach
code that walks the value recursively (serializers, ``json.dumps`` of job
options). Every JSON route parses through ``BoundedJSONParser``, which refuses
a body nested deeper than ``JSON_MAX_DEPTH`` with DRF's ``ParseError``: each
API family renders it as its own 400 ``invalid_json``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JsonTooDeep(ValueError):
    """A JSON value nested deeper than ``JSON_MAX_DEPTH``."""


def json_depth_check(value: Any, *, limit: int | None = None) -> None:
    """Raise JsonTooDeep if ``value`` nests lists/objects deeper than the limit (iteratively)."""
    limit = settings.JSON_MAX_DEPTH if limit is None else limit
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise JsonTooDeep(f"JSON nested deeper than {limit} levels (JSON_MAX_DEPTH)")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def too_deep_message() -> str:
    return f"JSON nested deeper than {settings.JSON_MAX_DEPTH} levels (JSON_MAX_DEPTH)"


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - {too_deep_message()}") from None
        try:
            json_depth_check(data)
        except JsonTooDeep as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        return data
