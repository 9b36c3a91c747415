"""Seed 000's envelope: ``{"success": true, "data": …}`` and
``{"success": false, "error": {"code", "message"}}``."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from claudesvc.envelopes import envelope_schema
from claudesvc.exceptions import classify, unexpected


def ok(data, status: int = 200) -> Response:
    return Response({"success": True, "data": data}, status=status)


def jobs_exception_handler(exc, context) -> Response:
    problem = classify(exc) or unexpected(exc)
    error = {"code": problem.code, "message": problem.message}
    if problem.field:
        error["field"] = problem.field
    return Response({"success": False, "error": error}, status=problem.status, headers=problem.headers)


# -- the same shapes for the schema ----------------------------------------------------


class ErrorBody(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    field = serializers.CharField(required=False)


class ErrorEnvelope(serializers.Serializer):
    success = serializers.BooleanField(default=False)
    error = ErrorBody()


def envelope(name: str, data_serializer, *, many: bool = False) -> type[serializers.Serializer]:
    """The schema of ``ok(data)``: ``data_serializer`` is a class (``many`` for a list) or an instance."""
    data = data_serializer(many=many) if isinstance(data_serializer, type) else data_serializer
    return envelope_schema(name, data)


class DeletedEnvelope(serializers.Serializer):
    success = serializers.BooleanField(default=True)
    message = serializers.CharField()


class JobsAPIView(APIView):
    rate_limit_group = "jobs"

    def get_exception_handler(self):
        return jobs_exception_handler
