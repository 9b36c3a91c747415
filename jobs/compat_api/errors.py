"""The compat family's error shapes and the base views that use them.

OpenAI routes (and ``/api/rca``, ``/v1/sessions``, ``/auth/login``) answer
``{"error": {"message", "type", "param", "code"}}``; ``/v1/messages`` answers
Anthropic's ``{"type": "error", "error": {"type", "message"}}``. Statuses and
types follow what each official SDK maps to its typed exceptions (400
BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError). Views and services raise typed
errors; only these handlers build error bodies.
"""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from claudesvc.errors import ServiceError
from claudesvc.exceptions import Problem, classify, unexpected
from claudesvc.parsers import BoundedJSONParser as JSONParser
from jobs.upstream import upstream_answer


class ClaudeExecutionError(ServiceError):
    """The job ran but did not produce an answer (the CLI or the upstream failed, timeout …)."""

    status = 500
    code = "unknown_error"


class UpstreamFailure(ServiceError):
    """The job failed because the model's API refused it: answered with that API's
    status (429, 529, 400 …, see jobs/upstream.py) and its retry semantics."""

    def __init__(self, message: str, *, status: int, code: str, headers: dict[str, str]) -> None:
        super().__init__(message, status=status, code=code)
        self.headers = headers


def execution_error(
    status: str | None, message: str, upstream_status: int | None = None, upstream_detail: str = ""
) -> ServiceError:
    """What a job that ended without an answer reads as, by how it ended."""
    if upstream_status:
        answer = upstream_answer(upstream_status, upstream_detail or message)
        return UpstreamFailure(answer.message, status=answer.status, code=answer.code, headers=answer.headers)
    code = {
        "timeout": "timeout",
        "cancelled": "cancelled",
        "structured_output": "structured_output_failed",
    }.get(status or "", "unknown_error")
    return ClaudeExecutionError(message, code=code)


def failure_error(failure) -> ServiceError:
    """``execution_error`` for an ``answers.Failure``."""
    return execution_error(failure.status, failure.message, failure.upstream_status, failure.upstream_detail)


# A failed job already ran (and, in a session, is part of the conversation):
# the SDKs must not silently run it again.
NO_RETRY = {"x-should-retry": "false"}

_MISSING = {"required", "null", "blank", "empty", "min_length"}

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",  # a key's budget is spent (code budget_exceeded)
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    529: "overloaded_error",
}
_OPENAI_CODES = {
    "unauthorized": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
}

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",  # a key's budget is spent
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _code(problem: Problem) -> str:
    if problem.reason is not None and problem.field:
        top = problem.field.split(".")[0].split("[")[0]
        if problem.reason in _MISSING and top == problem.field:
            return f"missing_{top}"
        return "invalid_value"
    return _OPENAI_CODES.get(problem.code, problem.code)


def _problem(exc: Exception) -> tuple[Problem, bool]:
    problem = classify(exc)
    if problem is None:
        return unexpected(exc), False
    if problem.code == "rate_limited":
        problem.message = "Too many requests, please try again later"  # seed 001's wording
    if isinstance(exc, UpstreamFailure):
        problem.headers = {**problem.headers, **exc.headers}
    return problem, isinstance(exc, ClaudeExecutionError)


def openai_error_body(problem: Problem, *, execution: bool = False) -> dict:
    if execution:
        kind = "claude_execution_error"
    else:
        kind = OPENAI_TYPES.get(
            problem.status, "api_error" if problem.status >= 500 else "invalid_request_error"
        )
    return {
        "error": {"message": problem.message, "type": kind, "param": problem.field, "code": _code(problem)}
    }


def anthropic_error_body(problem: Problem) -> dict:
    kind = ANTHROPIC_TYPES.get(
        problem.status, "api_error" if problem.status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": problem.message}}


def openai_exception_handler(exc, context) -> Response:
    problem, execution = _problem(exc)
    headers = {**(NO_RETRY if execution else {}), **problem.headers}
    return Response(openai_error_body(problem, execution=execution), status=problem.status, headers=headers)


def anthropic_exception_handler(exc, context) -> Response:
    problem, execution = _problem(exc)
    headers = {**(NO_RETRY if execution else {}), **problem.headers}
    return Response(anthropic_error_body(problem), status=problem.status, headers=headers)


class OpenAIView(APIView):
    parser_classes = [JSONParser]  # both APIs speak JSON only
    rate_limit_group = "compat"

    def get_exception_handler(self):
        return openai_exception_handler


class AnthropicView(APIView):
    parser_classes = [JSONParser]
    rate_limit_group = "compat"

    def get_exception_handler(self):
        return anthropic_exception_handler
