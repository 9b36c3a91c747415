"""What went wrong, in one neutral form that each family's handler renders in
its own seed's error shape."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf

from claudesvc.errors import ServiceError

logger = logging.getLogger(__name__)


@dataclass
class Problem:
    status: int
    code: str  # invalid_request, invalid_json, unauthorized, forbidden, not_found, ...
    message: str
    field: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # For validation errors: DRF's code for what was wrong ("required", "invalid", "max_value" …).
    reason: str | None = None


def _first_validation_error(detail, prefix: str = "") -> tuple[str | None, str, str | None]:
    """(field path, message, DRF error code) of the first error in a ValidationError's detail."""
    if isinstance(detail, dict):
        for name, inner in detail.items():
            if isinstance(name, int):  # ListField errors are keyed by position
                path = f"{prefix}[{name}]"
            else:
                path = f"{prefix}.{name}" if prefix else str(name)
            if name == "non_field_errors":
                path = prefix or None
            return _first_validation_error(inner, path or "")
    if isinstance(detail, list) and detail:
        for index, inner in enumerate(detail):
            if isinstance(inner, (dict, list)):
                return _first_validation_error(inner, f"{prefix}[{index}]")
            return prefix or None, str(inner), getattr(inner, "code", None)
    return prefix or None, str(detail), getattr(detail, "code", None)


def classify(exc: Exception) -> Problem | None:
    """A Problem for exceptions callers should see; None for unexpected ones (500)."""
    if isinstance(exc, ServiceError):
        return Problem(exc.status, exc.code, exc.message, exc.field, headers=dict(exc.headers))
    if isinstance(exc, drf.ValidationError):
        name, message, reason = _first_validation_error(exc.detail)
        text = f"{name}: {message}" if name else message
        return Problem(400, "invalid_request", text, name, reason=reason)
    if isinstance(exc, RequestDataTooBig):
        return Problem(
            413,
            "request_too_large",
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
        )
    if isinstance(exc, drf.ParseError):
        return Problem(400, "invalid_json", f"The request body could not be parsed: {exc.detail}")
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        message = "API key missing" if isinstance(exc, drf.NotAuthenticated) else str(exc.detail)
        return Problem(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="claudesvc"'})
    if isinstance(exc, (drf.PermissionDenied, PermissionDenied)):
        return Problem(403, "forbidden", "Not allowed")
    if isinstance(exc, (drf.NotFound, Http404)):
        return Problem(404, "not_found", "Not found")
    if isinstance(exc, drf.MethodNotAllowed):
        return Problem(405, "method_not_allowed", str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return Problem(415, "unsupported_media_type", str(exc.detail))
    if isinstance(exc, drf.Throttled):
        headers = {"Retry-After": str(exc.wait)} if exc.wait else {}
        return Problem(429, "rate_limited", str(exc.detail), headers=headers)
    if isinstance(exc, drf.APIException):
        return Problem(exc.status_code, "error", str(exc.detail))
    if _unavailable(exc):
        # The database or Redis is away (a restart): say so, and when to retry, instead of a bare 500.
        logger.warning("dependency unavailable: %s", exc)
        return Problem(
            503,
            "service_unavailable",
            "The service cannot reach its database or broker right now; retry in a few seconds",
            headers={"Retry-After": "5"},
        )
    return None


def _unavailable(exc: Exception) -> bool:
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError))


def unexpected(exc: Exception) -> Problem:
    logger.exception("unhandled error", exc_info=exc)
    return Problem(500, "internal_error", "An internal server error occurred")
