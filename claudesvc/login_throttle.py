"""Throttling ``POST /auth/login``: failed attempts per username and per client address.

Each failure counts in two fixed windows of ``LOGIN_FAILURE_WINDOW_SECONDS``,
one for the username (``LOGIN_MAX_FAILURES_PER_USERNAME``), one for the client
address (``LOGIN_MAX_FAILURES_PER_ADDRESS``), atomically in the default cache
(Redis in the scale-out deployment, so every server process sees the same
counts). Once either is reached, every attempt for that username or from that
address, the right password included, is 429 with ``Retry-After`` until the
window ends: guessing a password costs hours instead of seconds. A success
clears the username's count. Failures and lockouts are logged (never the
password).
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.exceptions import Throttled

logger = logging.getLogger(__name__)


def _window() -> tuple[int, int]:
    """(index of the current window, seconds until it ends)."""
    length = settings.LOGIN_FAILURE_WINDOW_SECONDS
    now = time.time()
    return int(now // length), max(1, int(length - now % length))


def _keys(*, username: str, address: str) -> list[tuple[str, int, str]]:
    index, _ = _window()
    name = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [
        (f"login-fail:user:{name}:{index}", settings.LOGIN_MAX_FAILURES_PER_USERNAME, "username"),
        (f"login-fail:addr:{address}:{index}", settings.LOGIN_MAX_FAILURES_PER_ADDRESS, "address"),
    ]


def client_address(request) -> str:
    """The peer address the ASGI server reports (it applies trusted proxy headers itself)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def login_throttle_check(*, username: str, address: str) -> None:
    """Raise Throttled (429, Retry-After) if this username or address is locked out."""
    keys = _keys(username=username, address=address)
    counts = cache.get_many([key for key, _, _ in keys])
    for key, limit, what in keys:
        if counts.get(key, 0) >= limit:
            _, wait = _window()
            logger.warning("login refused: too many failed attempts for this %s (from %s)", what, address)
            raise Throttled(
                wait=wait,
                detail=f"Too many failed logins for this {what}; try again in {wait} seconds",
            )


def login_failed(*, username: str, address: str) -> None:
    _, wait = _window()
    for key, _, _ in _keys(username=username, address=address):
        cache.add(key, 0, timeout=wait + 5)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=wait + 5)
    logger.warning("login failed for username %r from %s", username[:150], address)


def login_succeeded(*, username: str, address: str) -> None:
    cache.delete(_keys(username=username, address=address)[0][0])
