"""The one error type services raise; each API family's exception handler
turns it into that family's error body."""

from __future__ import annotations


class ServiceError(Exception):
    """A failure to report to the caller: HTTP status, a stable code, a message.

    ``code`` is generic (``invalid_request``, ``not_found`` …); each family maps
    it to its seed's vocabulary. ``field`` names the offending input, if any.
    """

    status = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        # Response headers the refusal needs (Retry-After of a limit …).
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class LimitExceeded(ServiceError):
    """A per-key limit refused the request (429); ``code`` names the limit
    (``active_jobs_limit``), never the rate limit's code, and ``Retry-After``
    says when to try again."""

    status = 429
    code = "active_jobs_limit"


class BudgetExceeded(ServiceError):
    """The key's spend limit is reached (402 ``budget_exceeded``); waiting a
    few seconds does not help, so no ``Retry-After``."""

    status = 402
    code = "budget_exceeded"
