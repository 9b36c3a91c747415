"""Seed 002's envelope: ``{"success", "data", "meta": {"timestamp", "requestId"}}``
and ``{"success": false, "error": {"code", "message"}, "meta"}`` with the seed's
upper-case error codes."""

from __future__ import annotations

from django.utils import timezone
from rest_framework.exceptions import NotAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from claudesvc.exceptions import Problem, classify, unexpected
from claudesvc.fields import iso_utc
from claudesvc.logcontext import request_id_var

# The core's neutral codes in seed 002's vocabulary; a ServiceError raised
# with an upper-case code (PROCESS_ALREADY_COMPLETED …) keeps it.
CODES = {
    "invalid_request": "VALIDATION_ERROR",
    "invalid_json": "VALIDATION_ERROR",
    "unauthorized": "UNAUTHORIZED",
    "forbidden": "FORBIDDEN",
    "not_found": "NOT_FOUND",
    "rate_limited": "RATE_LIMIT_EXCEEDED",
    "internal_error": "INTERNAL_ERROR",
}
BAD_CREDENTIALS = "Invalid or expired authentication token"
MISSING_CREDENTIALS = "Authentication required: send an API key or a bearer token"


def meta(request=None) -> dict:
    request_id = getattr(request, "request_id", None) if request is not None else None
    return {"timestamp": iso_utc(timezone.now()), "requestId": request_id or request_id_var.get()}


def ok(request, data, status: int = 200, *, success: bool = True) -> Response:
    return Response({"success": success, "data": data, "meta": meta(request)}, status=status)


def error_body(problem: Problem) -> dict:
    code = CODES.get(problem.code, problem.code.upper())
    message = problem.message
    if code == "RATE_LIMIT_EXCEEDED":
        wait = problem.headers.get("Retry-After")
        message = f"Rate limit exceeded. Try again in {wait} seconds." if wait else "Rate limit exceeded."
    error = {"code": code, "message": message}
    if problem.field:
        error["field"] = problem.field
    return error


def process_exception_handler(exc, context) -> Response:
    problem = classify(exc) or unexpected(exc)
    if problem.code == "not_found" and problem.message in ("Not found", "Job not found"):
        problem.message = "Process not found"
    if problem.code == "unauthorized":
        problem.message = MISSING_CREDENTIALS if isinstance(exc, NotAuthenticated) else BAD_CREDENTIALS
    body = {"success": False, "error": error_body(problem), "meta": meta(context.get("request"))}
    return Response(body, status=problem.status, headers=problem.headers)


class ProcessAPIView(APIView):
    """Views of the family name their rate-limit group in ``rate_limit_group``
    (``process_execute`` or ``process_status``: seed 002's two limits)."""

    def get_exception_handler(self):
        return process_exception_handler
