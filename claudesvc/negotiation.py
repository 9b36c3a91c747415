"""Content negotiation for routes that answer one fixed type whatever ``Accept`` says.

An event stream or a file download has exactly one representation. DRF's default
negotiation would answer ``Accept: text/event-stream`` (what ``EventSource``,
fetch-event-source and Swagger UI send) with 406, because no renderer claims
that type. These routes take any ``Accept`` (or none): the success response is
built by the view itself (an SSE or file response, not a rendered ``Response``),
and an error is rendered by the view's first renderer, JSON, so clients still
get the family's error body.
"""

from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """Parsers are chosen by ``Content-Type`` as usual; the renderer is always the first."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
