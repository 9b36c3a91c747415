"""Process API views (seed 002). Thin: parse, call a service or selector, shape."""

from __future__ import annotations

import json
import os

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.paginator import Paginator
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny

from claudesvc.health import service_health
from claudesvc.parsers import BoundedJSONParser
from jobs.cli import cli_info
from jobs.fallback import fallback_available
from jobs.metrics import caller_is_staff, service_metrics
from jobs.models import Job, JobStatus
from jobs.process_api import serializers as s
from jobs.process_api.envelope import ProcessAPIView, meta, ok
from jobs.process_api.selectors import process_get, process_list
from jobs.process_api.services import process_cancel, process_create, process_id, slots_busy
from jobs.streaming import Ended, Idle, follow_job

TAG = ["Process API"]
ERRORS = {
    400: OpenApiResponse(s.ProcessErrorEnvelope, description="VALIDATION_ERROR naming the field"),
    401: OpenApiResponse(s.ProcessErrorEnvelope, description="UNAUTHORIZED"),
}
NOT_FOUND = {
    404: OpenApiResponse(s.ProcessErrorEnvelope, description="NOT_FOUND: no such process of this caller")
}
QUEUED_MESSAGE = "Request queued due to high load. Use async endpoint or poll for status."
PENDING_MESSAGE = "Process started. Poll /api/v1/claude/processes/:id for status."


def _accepted(request, job: Job, status: str, message: str):
    data = s.ProcessAcceptedOutput({"processId": process_id(job), "status": status, "message": message}).data
    return ok(request, data, status=202)


async def _result_when_done(job_id, request_id: str):
    """The execute body once the process has ended. While it runs, a space now
    and then (leading whitespace is valid JSON) keeps proxies from closing an
    idle connection; the status line (200) went out at the start."""
    ended = None
    async for item in follow_job(job_id):
        if isinstance(item, Idle):
            yield b" "
        elif isinstance(item, Ended):
            ended = item
    job = (
        await Job.objects.select_related("api_key", "user").filter(pk=job_id).afirst()
        if ended.status
        else None
    )
    request_meta = {**meta(), "requestId": request_id}
    if job is None:
        body = {
            "success": False,
            "error": {"code": "NOT_FOUND", "message": "The process was deleted while it ran"},
            "meta": request_meta,
        }
    else:
        body = {"success": True, "data": await sync_to_async(s.process_result)(job), "meta": request_meta}
    yield json.dumps(body).encode()


class ExecuteView(ProcessAPIView):
    # JSON only: seed 002's numbers and booleans cannot be told apart from text in a form.
    parser_classes = [BoundedJSONParser]
    rate_limit_group = "process_execute"

    @extend_schema(
        operation_id="process_execute",
        tags=TAG,
        summary="Run a prompt and wait for the result",
        description=(
            "Answers 200 with the process's result once it has ended, whatever its status (`completed`, "
            "`failed`, `timeout`, `cancelled`: see `status`, `exitCode`, `error`). While it runs, the "
            "response may carry leading spaces (valid JSON) to keep the connection alive. When every "
            "execution slot is busy it answers 202 `queued` at once instead; poll `/processes/{id}`."
        ),
        request=s.ExecuteInput,
        responses={
            200: s.ExecuteEnvelope,
            202: OpenApiResponse(s.AcceptedEnvelope, description="Queued due to high load"),
            **ERRORS,
        },
    )
    def post(self, request):
        data = s.ExecuteInput(data=request.data)
        data.is_valid(raise_exception=True)
        busy = slots_busy()
        job = process_create(caller=request.user, queued=busy, **data.create_kwargs())
        if busy:
            return _accepted(request, job, "queued", QUEUED_MESSAGE)
        response = StreamingHttpResponse(
            _result_when_done(job.pk, request.request_id), content_type="application/json"
        )
        response["Cache-Control"] = "no-store"
        response["X-Accel-Buffering"] = "no"
        return response


class ExecuteAsyncView(ProcessAPIView):
    # JSON only: seed 002's numbers and booleans cannot be told apart from text in a form.
    parser_classes = [BoundedJSONParser]
    rate_limit_group = "process_execute"

    @extend_schema(
        operation_id="process_execute_async",
        tags=TAG,
        summary="Start a prompt and return its process id at once",
        request=s.ExecuteInput,
        responses={202: s.AcceptedEnvelope, **ERRORS},
    )
    def post(self, request):
        data = s.ExecuteInput(data=request.data)
        data.is_valid(raise_exception=True)
        job = process_create(caller=request.user, **data.create_kwargs())
        return _accepted(request, job, "pending", PENDING_MESSAGE)


class ProcessListView(ProcessAPIView):
    rate_limit_group = "process_status"

    @extend_schema(
        operation_id="process_list",
        tags=TAG,
        summary="The caller's processes, newest first, a page at a time",
        parameters=[s.ListQuery],
        responses={200: s.ProcessListEnvelope, **ERRORS},
    )
    def get(self, request):
        query = s.ListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        page, page_size = query.validated_data["page"], query.validated_data["pageSize"]
        paginator = Paginator(
            process_list(caller=request.user, status=query.validated_data.get("status")).select_related(
                "api_key", "user"
            ),
            page_size,
        )
        total = paginator.count
        jobs = paginator.page(page).object_list if page <= paginator.num_pages and total else []
        listing = {
            "processes": jobs,
            "total": total,
            "pagination": {
                "page": page,
                "pageSize": page_size,
                "totalPages": paginator.num_pages if total else 0,
            },
        }
        return ok(request, s.ProcessListOutput(listing).data)


class ProcessDetailView(ProcessAPIView):
    rate_limit_group = "process_status"

    @extend_schema(
        operation_id="process_retrieve",
        tags=TAG,
        summary="Status of a process, with its result once it has ended",
        responses={200: s.ProcessEnvelope, **ERRORS, **NOT_FOUND},
    )
    def get(self, request, id):
        job = process_get(caller=request.user, id=id)
        return ok(request, s.ProcessOutput(job, context={"with_result": True}).data)

    @extend_schema(
        operation_id="process_cancel",
        tags=TAG,
        summary="Cancel a pending, queued or running process",
        responses={
            200: s.CancelledEnvelope,
            400: OpenApiResponse(
                s.ProcessErrorEnvelope, description="PROCESS_ALREADY_COMPLETED: the process has already ended"
            ),
            401: ERRORS[401],
            **NOT_FOUND,
        },
    )
    def delete(self, request, id):
        job = process_cancel(job=process_get(caller=request.user, id=id))
        data = {"message": "Process cancelled successfully", "processId": process_id(job)}
        return ok(request, s.ProcessCancelledOutput(data).data)


class HealthView(ProcessAPIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="process_health",
        tags=TAG,
        summary="Whether processes can run (no authentication)",
        description=(
            "Healthy when jobs can run (the same `checks` as `/health`: database, broker, workers) and "
            "the Claude CLI runs, or it cannot but the Anthropic API fallback is configured (processes "
            "then run through the Messages API). 503 otherwise. `cli.path` is the binary's name only."
        ),
        responses={200: s.HealthEnvelope, 503: s.UnhealthyEnvelope},
    )
    def get(self, request):
        cli = cli_info()
        fallback = fallback_available()
        # The binary's name, never its absolute path (no server paths to callers without a key).
        name = os.path.basename(cli.path) or "claude"
        cli_data = (
            {"installed": True, "path": name, "version": cli.version}
            if cli.installed
            else {"installed": False, "path": name, "error": (cli.error or "").replace(cli.path, name)}
        )
        # The same checks as /health: processes run only where jobs can run at all.
        service = service_health()
        healthy = (cli.installed or fallback) and service.ok
        data = {
            "healthy": healthy,
            "checks": service.checks,
            "cli": cli_data,
            "apiFallbackAvailable": fallback,
            "activeProcesses": Job.objects.filter(status=JobStatus.RUNNING).count(),
            "queueSize": Job.objects.filter(status=JobStatus.PENDING).count(),
            "maxConcurrentProcesses": settings.MAX_CONCURRENT_PROCESSES,
        }
        return ok(request, s.ProcessHealthOutput(data).data, status=200 if healthy else 503, success=healthy)


class MetricsView(ProcessAPIView):
    rate_limit_group = "process_status"

    @extend_schema(
        operation_id="process_metrics",
        tags=TAG,
        summary="Service metrics: outcomes, load, duration percentiles",
        description=(
            "Counts and durations cover the caller's own jobs that ended within `periodSeconds` "
            "(every job of the service for staff: a JWT of a staff user, or a key a staff user owns); "
            "`recentMetrics` lists the caller's own most recently ended processes, with the peak memory "
            "and CPU time of their Claude CLI process tree as the worker measured them."
        ),
        parameters=[s.MetricsQuery],
        responses={200: s.MetricsEnvelope, **ERRORS},
    )
    def get(self, request):
        query = s.MetricsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        # Service-wide totals are for staff; a key sees its own jobs' figures.
        scope = None if caller_is_staff(request.user) else request.user.owns()
        m = service_metrics(period_seconds=query.validated_data["periodSeconds"], scope=scope)
        recent = None
        if query.validated_data["includeRecent"]:
            recent = (
                process_list(caller=request.user)
                .filter(finished_at__isnull=False)
                .select_related("api_key", "user")
                .order_by("-finished_at")[: query.validated_data["recentLimit"]]
            )
        return ok(request, s.ProcessMetricsOutput(m, context={"recent": recent}).data)
