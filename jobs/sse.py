"""Server-Sent Events for every API family: the response and the frames, written once.

The Jobs API events stream and the compat streams (OpenAI chunks, Anthropic
events) all answer through ``sse_response`` and write their frames with
``frame``/``KEEPALIVE``. The bytes are what the official SDKs and browsers read
(see the compat formats): ``data:`` lines with compact JSON, an optional
``event:`` and ``id:``, a blank line after each frame, and a comment line
(``: keep-alive``) while nothing happens, so proxies keep an idle connection open.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from typing import Any

from django.http import StreamingHttpResponse

CONTENT_TYPE = "text/event-stream"
# An SSE comment line: clients ignore it, proxies see traffic on an idle stream.
KEEPALIVE = ": keep-alive\n\n"


def compact_json(data: Any) -> str:
    """JSON without spaces: what every ``data:`` line of the streams carries."""
    return json.dumps(data, separators=(",", ":"))


def frame(data: str, *, event: str | None = None, id: int | str | None = None) -> str:
    """One event: ``id:``, ``event:`` (when given) and one ``data:`` line of ``data`` as is."""
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event is not None else "")
    return f"{head}data: {data}\n\n"


def retry(milliseconds: int) -> str:
    """The reconnect delay an ``EventSource`` uses after the connection drops."""
    return f"retry: {milliseconds}\n\n"


def sse_response(
    stream: Iterable[str] | AsyncIterable[str], *, charset: str | None = None
) -> StreamingHttpResponse:
    """A streaming response of SSE frames, neither cached nor buffered on the way.

    ``X-Accel-Buffering: no`` stops nginx (and proxies that honour it) from
    holding frames back. ``charset`` names the encoding in the Content-Type
    (the compat routes send ``; charset=utf-8`` as the APIs they imitate do;
    the Jobs API never did).
    """
    content_type = f"{CONTENT_TYPE}; charset={charset}" if charset else CONTENT_TYPE
    response = StreamingHttpResponse(stream, content_type=content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
