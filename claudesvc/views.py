"""What every family shares at the root: health, landing page, JSON 404s."""

from __future__ import annotations

import time

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
from claudesvc.health import STARTED, service_health
from jobs.cli import cli_info
from jobs.models import Job, JobStatus
from jobs.sandbox import sandbox_in_force


class HealthCheckOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    latency_ms = serializers.FloatField(required=False)
    error = serializers.CharField(required=False, help_text="Why the check failed")


class DatabaseCheckOutput(HealthCheckOutput):
    engine = serializers.CharField(required=False, help_text="postgresql or sqlite")


class BrokerCheckOutput(HealthCheckOutput):
    kind = serializers.CharField(required=False, help_text="redis or orm (the database)")


class WorkersCheckOutput(HealthCheckOutput):
    live = serializers.IntegerField(required=False, help_text="Worker processes with a recent heartbeat")
    busy = serializers.IntegerField(required=False, help_text="Of those, running a job")
    stopping = serializers.IntegerField(
        required=False, help_text="Of those, finishing their job before exiting"
    )
    last_heartbeat_age_seconds = serializers.FloatField(
        required=False, allow_null=True, help_text="Seconds since the newest heartbeat of any worker"
    )
    max_age_seconds = serializers.IntegerField(required=False, help_text="HEALTH_WORKER_MAX_AGE_SECONDS")


class HealthChecksOutput(serializers.Serializer):
    database = DatabaseCheckOutput()
    broker = BrokerCheckOutput()
    workers = WorkersCheckOutput()


class HealthOutput(serializers.Serializer):
    status = serializers.CharField(help_text='"ok", or "error" (with HTTP 503) when jobs cannot run')
    version = serializers.CharField()
    claude_cli = serializers.CharField(allow_null=True)
    timestamp = serializers.CharField(help_text="Now, ISO 8601 UTC")
    uptime = serializers.FloatField(help_text="Seconds since this server process started")
    checks = HealthChecksOutput()
    sandbox = serializers.ChoiceField(
        choices=["bwrap", "none"],
        help_text="The OS sandbox every Claude CLI runs in on this host (CLAUDE_SANDBOX)",
    )


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="health",
        summary="Health check (no API key)",
        description=(
            "Seed 000's fields, plus `checks`: the database, the broker and the workers (their newest "
            "heartbeat). 503 with `status: error` when jobs cannot run: the database or the broker does "
            "not answer, or no worker has sent a heartbeat for HEALTH_WORKER_MAX_AGE_SECONDS."
        ),
        responses={200: HealthOutput, 503: HealthOutput},
    )
    def get(self, request):
        cli = cli_info()
        health = service_health()
        return Response(
            {
                "status": "ok" if health.ok else "error",
                "version": settings.SERVICE_VERSION,
                "claude_cli": cli.version,
                "timestamp": iso_utc(timezone.now()),
                "uptime": round(time.time() - STARTED, 3),
                "checks": health.checks,
                "sandbox": sandbox_in_force(),
            },
            status=200 if health.ok else 503,
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
