"""Seed 000's envelope: ``{"success": true, "data": …}`` and
``{"success": false, "error": {"code", "message"}}``."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from claudesvc.exceptions import classify, unexpected


def ok(data, status: int = 200) -> Response:
    return Response({"success": True, "data": data}, status=status)


def jobs_exception_handler(exc, context) -> Response:
    problem = classify(exc) or unexpected(exc)
    error = {"code": problem.code, "message": problem.message}
    if problem.field:
        error["field"] = problem.field
    return Response({"success": False, "error": error}, status=problem.status, headers=problem.headers)


class JobsAPIView(APIView):
    rate_limit_group = "jobs"

    def get_exception_handler(self):
        return jobs_exception_handler
