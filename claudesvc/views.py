"""What every family shares at the root: health, landing page, JSON 404s."""

from __future__ import annotations

import time

import psutil
from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from claudesvc.fields import iso_utc
from jobs.models import Job, JobStatus
from jobs.runner import cli_info


class HealthOutput(serializers.Serializer):
    status = serializers.CharField()
    version = serializers.CharField()
    claude_cli = serializers.CharField(allow_null=True)
    timestamp = serializers.CharField(help_text="Now, ISO 8601 UTC")
    uptime = serializers.FloatField(help_text="Seconds since this server process started")


# When this process started (not when this module was imported).
_STARTED = psutil.Process().create_time()


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="health", summary="Health check (no API key)", responses={200: HealthOutput})
    def get(self, request):
        cli = cli_info()
        return Response(
            {
                "status": "ok",
                "version": settings.SERVICE_VERSION,
                "claude_cli": cli.version,
                "timestamp": iso_utc(timezone.now()),
                "uptime": round(time.time() - _STARTED, 3),
            }
        )


def landing(request):
    cli = cli_info()
    counts = {
        "running": Job.objects.filter(status=JobStatus.RUNNING).count(),
        "pending": Job.objects.filter(status=JobStatus.PENDING).count(),
    }
    return render(
        request, "landing.html", {"cli": cli, "counts": counts, "version": settings.SERVICE_VERSION}
    )


def not_found(request, exception=None):
    message = f"No route for {request.path}"
    # Each family's clients expect its own error shape, even for routes that do not exist.
    if request.path.startswith("/v1/messages"):
        body = {"type": "error", "error": {"type": "not_found_error", "message": message}}
    elif request.path.startswith(("/v1/", "/api/rca", "/auth/")):
        body = {"error": {"message": message, "type": "not_found_error", "param": None, "code": "not_found"}}
    else:
        body = {"success": False, "error": {"code": "not_found", "message": message}}
    return JsonResponse(body, status=404)


def server_error(request):
    return JsonResponse(
        {
            "success": False,
            "error": {"code": "internal_error", "message": "An internal server error occurred"},
        },
        status=500,
    )


def bad_request(request, exception=None):
    """400s Django raises before a view runs; a Host outside DJANGO_ALLOWED_HOSTS says so."""
    from django.core.exceptions import DisallowedHost

    if isinstance(exception, DisallowedHost):
        host = request.META.get("HTTP_HOST", "")[:200]
        message = (
            f"The Host header {host!r} is not one this service answers to: "
            "add it to DJANGO_ALLOWED_HOSTS (comma-separated) on the server"
        )
        return JsonResponse(
            {"success": False, "error": {"code": "host_not_allowed", "message": message}}, status=400
        )
    return JsonResponse(
        {"success": False, "error": {"code": "bad_request", "message": "Bad request"}}, status=400
    )
