"""What the model's API (the service's upstream) answered when a job failed on it.

When the Anthropic API refuses a call, the Claude Code CLI ends the run with a
result message like ``{"is_error": true, "api_error_status": 429, "result":
"API Error: Request rejected (429) · …"}`` (``api_error_status`` since CLI
2.1.110; older CLIs, and other error paths, only have the text, e.g. ``API
Error: 529 …`` or ``… overloaded …``). The runner records that status on the
job (``Job.upstream_status``); the API families then answer with a matching
status instead of a generic 500, so clients back off and retry like they
would against the API itself:

==========================  ==========  ==========================================
upstream                    answer      retry semantics sent to the client
==========================  ==========  ==========================================
429 rate limited            429         ``retry-after``, ``x-should-retry: true``
529 / "overloaded"          529         ``retry-after``, ``x-should-retry: true``
other 5xx                   502         ``retry-after``, ``x-should-retry: true``
400, 404, 413, other 4xx    same        ``x-should-retry: false``
401, 403 (service's creds)  same        ``x-should-retry: false``; the message says
                                        it is the service's own upstream key, not
                                        the caller's
==========================  ==========  ==========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

# "API Error: 529 …", "API Error: Request rejected (429) …", "… API Error: 401 …"
_STATUS_IN_TEXT = re.compile(r"API Error:\s*(?:[^()\n]*\()?(\d{3})\b")
_OVERLOADED = re.compile(r"\boverloaded", re.IGNORECASE)


def upstream_status_of(result: Any) -> int | None:
    """The upstream HTTP status a failed CLI result reports, or None.

    ``result`` is the CLI's result message (the SDK's ``ResultMessage`` or its
    stream-json dict). Only error results count: a successful answer that
    happens to quote "API Error: 400" is not an upstream failure.
    """
    if result is None:
        return None
    get = result.get if isinstance(result, dict) else lambda name: getattr(result, name, None)
    if not get("is_error"):
        return None
    status = get("api_error_status")
    if isinstance(status, int) and 400 <= status <= 599:
        return status
    texts = [get("result") or "", *(get("errors") or [])]
    for text in texts:
        if not isinstance(text, str):
            continue
        match = _STATUS_IN_TEXT.search(text)
        if match and 400 <= int(match.group(1)) <= 599:
            return int(match.group(1))
    if any(isinstance(t, str) and "API Error" in t and _OVERLOADED.search(t) for t in texts):
        return 529
    return None


@dataclass(frozen=True)
class UpstreamAnswer:
    """How a job that failed on its upstream reads to the caller."""

    status: int  # the HTTP status the service answers with
    code: str  # family-neutral, e.g. "upstream_rate_limited"
    message: str
    retryable: bool
    retry_after: int | None

    @property
    def headers(self) -> dict[str, str]:
        headers = {"x-should-retry": "true" if self.retryable else "false"}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return headers


def upstream_answer(upstream_status: int, detail: str) -> UpstreamAnswer:
    """The caller's view of an upstream failure with ``upstream_status``."""
    retry_after = settings.COMPAT_UPSTREAM_RETRY_AFTER_SECONDS
    detail = detail.strip() or f"HTTP {upstream_status}"
    if upstream_status == 429:
        return UpstreamAnswer(
            429,
            "upstream_rate_limited",
            f"The model's API is rate limiting this service: {detail}",
            True,
            retry_after,
        )
    if upstream_status == 529:
        return UpstreamAnswer(
            529, "upstream_overloaded", f"The model's API is overloaded: {detail}", True, retry_after
        )
    if upstream_status in (401, 403):
        return UpstreamAnswer(
            upstream_status,
            "upstream_authentication_error" if upstream_status == 401 else "upstream_permission_error",
            "The service's own upstream (the model's API) refused the service's credentials "
            f"(HTTP {upstream_status}); your API key was accepted. Tell the service's operator. {detail}",
            False,
            None,
        )
    if upstream_status >= 500:
        return UpstreamAnswer(
            502,
            "upstream_error",
            f"The model's API failed (HTTP {upstream_status}): {detail}",
            True,
            retry_after,
        )
    return UpstreamAnswer(
        upstream_status,
        "upstream_invalid_request",
        f"The model's API refused the request (HTTP {upstream_status}): {detail}",
        False,
        None,
    )
