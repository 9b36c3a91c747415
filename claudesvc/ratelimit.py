"""Per-caller rate limits for every API family, on django-ratelimit's counters.

A view names its group (``rate_limit_group``); ``GroupRateThrottle`` runs after
authentication (so 401s never count against a key), counts the request with
django-ratelimit's check-and-increment in the cache (atomic in Redis, so it
holds across server processes; exact within one process on the local-memory
cache of the embedded deployment) and leaves the numbers on the request.
``RateLimitHeadersMiddleware`` writes them as headers before the first byte of
any response, streaming ones included. A refused request raises DRF's
``Throttled``, which each family's exception handler renders in its own shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django_ratelimit.core import _split_rate, get_usage
from rest_framework.throttling import BaseThrottle

from apikeys.models import RateLimitOverride
from claudesvc.prometheus import record_rate_limit_refusal


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset_seconds: int
    window_seconds: int
    legacy_headers: bool

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if self.legacy_headers:
            headers.update(
                {
                    "X-RateLimit-Limit": str(self.limit),
                    "X-RateLimit-Remaining": str(self.remaining),
                    "X-RateLimit-Reset": str(int(time.time()) + self.reset_seconds),
                }
            )
        return headers


def rate_for(caller, group: str) -> tuple[int, int]:
    """(requests, window seconds) for a caller in a group: the key's override, else the default."""
    if caller.api_key is not None:
        override = (
            RateLimitOverride.objects.filter(api_key=caller.api_key, group=group)
            .values_list("requests", "window_seconds")
            .first()
        )
        if override:
            return override
    return _split_rate(settings.RATE_LIMITS[group])


def rate_limit_count(caller, group: str) -> tuple[bool, RateLimitState | None]:
    """Count one request of ``caller`` in ``group``; (allowed, numbers for the headers).

    Shared by the DRF throttle and the WebSocket consumer, so a request over
    either transport spends the same budget.
    """
    if not settings.RATELIMIT_ENABLE or not getattr(caller, "is_authenticated", False):
        return True, None
    rate = rate_for(caller, group)
    # django-ratelimit only reads the request to match methods; with the
    # default (all methods) and a key function, none is needed.
    usage = get_usage(None, group=group, key=lambda _group, _request: caller.label, rate=rate, increment=True)
    if usage is None:
        return True, None
    state = RateLimitState(
        limit=usage["limit"],
        remaining=max(0, usage["limit"] - usage["count"]),
        # django-ratelimit's window still counts during its last whole second
        # (time_left 0): it is over only one second later. A client that sleeps
        # RateLimit-Reset seconds (seed 001's retry example) must not retry early.
        reset_seconds=min(rate[1], max(0, usage["time_left"]) + 1),
        window_seconds=rate[1],
        legacy_headers=group in settings.RATE_LIMIT_LEGACY_HEADER_GROUPS,
    )
    if usage["should_limit"]:
        record_rate_limit_refusal(group)
    return not usage["should_limit"], state


class GroupRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.state: RateLimitState | None = None

    def allow_request(self, request, view) -> bool:
        group = getattr(view, "rate_limit_group", None)
        if not group:
            return True
        allowed, self.state = rate_limit_count(request.user, group)
        if self.state is not None:
            # The underlying HttpRequest, so the middleware finds it.
            request._request.rate_limit = self.state
        return allowed

    def wait(self) -> float | None:
        return max(1, self.state.reset_seconds) if self.state else None


class RateLimitHeadersMiddleware:
    """Copies the throttle's numbers into headers; async-capable so streams keep streaming."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    @staticmethod
    def _apply(request, response):
        state = getattr(request, "rate_limit", None)
        if state is not None:
            for name, value in state.headers().items():
                response.headers[name] = value
        return response

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return self._apply(request, self.get_response(request))

    async def __acall__(self, request):
        return self._apply(request, await self.get_response(request))
