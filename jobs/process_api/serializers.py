"""Request and response shapes of the Process API (seed 002), camelCase as the seed writes them."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from claudesvc.errors import ServiceError
from claudesvc.fields import StrictCharField, StrictIntegerField, iso_utc
from claudesvc.views import HealthChecksOutput
from jobs.fields import ModelField
from jobs.models import Job, JobStatus
from jobs.process_api.selectors import PROCESS_STATUSES
from jobs.process_api.services import process_id, process_status, workdir_resolve

# -- input ----------------------------------------------------------------------------


class ExecuteInput(serializers.Serializer):
    """The body of POST /execute, /execute/async and of the WebSocket ``claude:execute``."""

    prompt = StrictCharField(
        min_length=1, max_length=100_000, trim_whitespace=False, help_text="The prompt (1-100000 characters)"
    )
    systemPrompt = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=10_000,
        trim_whitespace=False,
        help_text="Appended to Claude Code's system prompt (at most 10000 characters)",
    )
    model = ModelField(
        help_text="haiku | sonnet | opus or a full Claude model id; default: the service's "
        "CLAUDE_DEFAULT_MODEL (sonnet)",
    )
    maxTokens = StrictIntegerField(
        required=False, min_value=1, max_value=100_000, help_text="Most tokens in the answer"
    )
    workingDirectory = StrictCharField(
        required=False,
        help_text="Absolute path of a directory inside PROCESS_ALLOWED_WORKDIRS to run in (read-only "
        "for the safe policy); refused when the service allows none",
    )
    timeoutMs = StrictIntegerField(
        required=False, min_value=1000, max_value=600_000, help_text="Stop the process after this long"
    )
    priority = StrictIntegerField(
        required=False, default=0, min_value=0, max_value=100, help_text="Higher starts first"
    )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({unknown[0]: ["Unknown field."]})
        return super().to_internal_value(data)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        if len(value) > settings.MAX_PROMPT_CHARS:
            raise serializers.ValidationError(
                f"Ensure this field has no more than {settings.MAX_PROMPT_CHARS} characters."
            )
        return value

    def validate_workingDirectory(self, value: str):
        try:
            return workdir_resolve(value)
        except ServiceError as exc:
            raise serializers.ValidationError(exc.message) from exc

    def validate_timeoutMs(self, value: int) -> int:
        limit = settings.JOB_TIMEOUT_SECONDS * 1000
        if value > limit:
            raise serializers.ValidationError(f"This service allows at most {limit} ms.")
        return value

    def create_kwargs(self) -> dict:
        data = self.validated_data
        return {
            "prompt": data["prompt"],
            "system_prompt": data.get("systemPrompt", ""),
            "model": data.get("model") or None,
            "max_tokens": data.get("maxTokens"),
            "working_directory": data.get("workingDirectory"),
            "timeout_ms": data.get("timeoutMs"),
            "priority": data.get("priority", 0),
        }


class ListQuery(serializers.Serializer):
    page = serializers.IntegerField(required=False, default=1, min_value=1)
    pageSize = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    status = serializers.ChoiceField(choices=PROCESS_STATUSES, required=False)


class MetricsQuery(serializers.Serializer):
    periodSeconds = serializers.IntegerField(required=False, default=3600, min_value=60, max_value=86_400)
    includeRecent = serializers.BooleanField(required=False, default=False)
    recentLimit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)


# -- output ---------------------------------------------------------------------------


def _usage(job: Job) -> dict | None:
    if job.usage is None:
        return None
    usage = job.usage
    # What the model read, cached or not: Claude Code caches most of its prompt.
    input_tokens = sum(
        int(usage.get(name) or 0)
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    output_tokens = int(usage.get("output_tokens") or 0)
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    }


def _duration_ms(job: Job) -> int | None:
    if job.duration_ms is not None:
        return job.duration_ms
    if job.started_at and job.finished_at:
        return int((job.finished_at - job.started_at).total_seconds() * 1000)
    return None


def process_result(job: Job) -> dict:
    """What a finished process produced: the seed's execute body."""
    parsed = None
    if job.status == JobStatus.COMPLETED:
        parsed = {"content": job.result, "usage": _usage(job)}
    return {
        "id": process_id(job),
        "userId": job_user_id(job),
        "status": process_status(job),
        "model": job.model,
        "stdout": job.result,
        "stderr": job.stderr,
        "exitCode": job.exit_code,
        "error": job.error_message or None,
        "executedVia": (job.options or {}).get("executed_via", "cli"),
        "startedAt": iso_utc(job.started_at),
        "completedAt": iso_utc(job.finished_at),
        "durationMs": _duration_ms(job),
        "parsedResponse": parsed,
    }


def process_summary(job: Job, *, with_result: bool = False) -> dict:
    """A process in the seed's status shapes: keys that do not apply yet are left out."""
    data = {"processId": process_id(job), "status": process_status(job), "createdAt": iso_utc(job.created_at)}
    if job.started_at:
        data["startedAt"] = iso_utc(job.started_at)
    if job.is_final:
        data["completedAt"] = iso_utc(job.finished_at)
        data["durationMs"] = _duration_ms(job)
        if with_result:
            data["result"] = process_result(job)
    return data


def job_user_id(job: Job) -> str:
    if job.api_key_id:
        return f"key:{job.api_key.prefix}"
    return f"user:{job.user_id}"


def recent_metric(job: Job) -> dict:
    data = {
        "processId": process_id(job),
        "userId": job_user_id(job),
        "durationMs": _duration_ms(job),
        "inputSize": len(job.prompt) + len(job.system_prompt),
        "outputSize": len(job.result),
        "success": job.status == JobStatus.COMPLETED,
        "timestamp": iso_utc(job.finished_at),
    }
    if job.peak_memory_bytes is not None:
        data["peakMemoryBytes"] = job.peak_memory_bytes
    if job.cpu_time_ms is not None:
        data["cpuTimeMs"] = job.cpu_time_ms
    return data


# -- schema-only shapes (the views build plain dicts; these describe them) -------------


class ProcessMetaOutput(serializers.Serializer):
    timestamp = serializers.CharField()
    requestId = serializers.CharField()


class ProcessErrorBody(serializers.Serializer):
    code = serializers.ChoiceField(
        choices=[
            "VALIDATION_ERROR",
            "UNAUTHORIZED",
            "NOT_FOUND",
            "PROCESS_ALREADY_COMPLETED",
            "RATE_LIMIT_EXCEEDED",
            "INTERNAL_ERROR",
        ]
    )
    message = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The offending input, for VALIDATION_ERROR")


class ProcessErrorEnvelope(serializers.Serializer):
    success = serializers.BooleanField(default=False)
    error = ProcessErrorBody()
    meta = ProcessMetaOutput()


class ProcessUsageOutput(serializers.Serializer):
    inputTokens = serializers.IntegerField()
    outputTokens = serializers.IntegerField()
    totalTokens = serializers.IntegerField()


class ProcessParsedResponseOutput(serializers.Serializer):
    content = serializers.CharField()
    usage = ProcessUsageOutput(allow_null=True)


class ProcessResultOutput(serializers.Serializer):
    id = serializers.CharField()
    userId = serializers.CharField()
    status = serializers.ChoiceField(choices=PROCESS_STATUSES)
    model = serializers.CharField()
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    exitCode = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    executedVia = serializers.ChoiceField(
        choices=["cli", "api"], help_text="api: the CLI could not run; answered by the Messages API"
    )
    startedAt = serializers.CharField(allow_null=True)
    completedAt = serializers.CharField(allow_null=True)
    durationMs = serializers.IntegerField(allow_null=True)
    parsedResponse = ProcessParsedResponseOutput(allow_null=True)


class ProcessAcceptedOutput(serializers.Serializer):
    processId = serializers.CharField()
    status = serializers.CharField(help_text="pending (async) or queued (every slot busy)")
    message = serializers.CharField()


class ProcessOutput(serializers.Serializer):
    processId = serializers.CharField()
    status = serializers.ChoiceField(choices=PROCESS_STATUSES)
    createdAt = serializers.CharField()
    startedAt = serializers.CharField(required=False)
    completedAt = serializers.CharField(required=False)
    durationMs = serializers.IntegerField(required=False, allow_null=True)
    result = ProcessResultOutput(required=False)


class ProcessPaginationOutput(serializers.Serializer):
    page = serializers.IntegerField()
    pageSize = serializers.IntegerField()
    totalPages = serializers.IntegerField()


class ProcessListOutput(serializers.Serializer):
    processes = ProcessOutput(many=True)
    total = serializers.IntegerField()
    pagination = ProcessPaginationOutput()


class ProcessCancelledOutput(serializers.Serializer):
    message = serializers.CharField()
    processId = serializers.CharField()


class ProcessCliOutput(serializers.Serializer):
    installed = serializers.BooleanField()
    path = serializers.CharField(required=False)
    version = serializers.CharField(required=False)
    error = serializers.CharField(required=False)


class ProcessHealthOutput(serializers.Serializer):
    healthy = serializers.BooleanField()
    checks = HealthChecksOutput(help_text="The checks of GET /health: database, broker, workers")
    cli = ProcessCliOutput()
    apiFallbackAvailable = serializers.BooleanField()
    activeProcesses = serializers.IntegerField()
    queueSize = serializers.IntegerField()
    maxConcurrentProcesses = serializers.IntegerField()


class ProcessRecentMetricOutput(serializers.Serializer):
    processId = serializers.CharField()
    userId = serializers.CharField()
    durationMs = serializers.IntegerField(allow_null=True)
    peakMemoryBytes = serializers.IntegerField(required=False)
    cpuTimeMs = serializers.IntegerField(required=False)
    inputSize = serializers.IntegerField()
    outputSize = serializers.IntegerField()
    success = serializers.BooleanField()
    timestamp = serializers.CharField()


class ProcessMetricsOutput(serializers.Serializer):
    totalProcesses = serializers.IntegerField()
    successfulProcesses = serializers.IntegerField()
    failedProcesses = serializers.IntegerField()
    timedOutProcesses = serializers.IntegerField()
    cancelledProcesses = serializers.IntegerField()
    activeProcesses = serializers.IntegerField()
    queuedProcesses = serializers.IntegerField()
    avgDurationMs = serializers.IntegerField(allow_null=True)
    minDurationMs = serializers.IntegerField(allow_null=True)
    maxDurationMs = serializers.IntegerField(allow_null=True)
    p95DurationMs = serializers.IntegerField(allow_null=True)
    p99DurationMs = serializers.IntegerField(allow_null=True)
    successRate = serializers.FloatField(allow_null=True, help_text="0-1; null when nothing ended")
    timestamp = serializers.CharField()
    periodSeconds = serializers.IntegerField()
    recentMetrics = ProcessRecentMetricOutput(many=True, required=False)


def envelope(name: str, data, *, success: bool = True) -> type[serializers.Serializer]:
    return type(
        name,
        (serializers.Serializer,),
        {"success": serializers.BooleanField(default=success), "data": data, "meta": ProcessMetaOutput()},
    )


ExecuteEnvelope = envelope("ProcessExecuteEnvelope", ProcessResultOutput())
AcceptedEnvelope = envelope("ProcessAcceptedEnvelope", ProcessAcceptedOutput())
ProcessEnvelope = envelope("ProcessEnvelope", ProcessOutput())
ProcessListEnvelope = envelope("ProcessListEnvelope", ProcessListOutput())
CancelledEnvelope = envelope("ProcessCancelledEnvelope", ProcessCancelledOutput())
HealthEnvelope = envelope("ProcessHealthEnvelope", ProcessHealthOutput())
UnhealthyEnvelope = envelope("ProcessUnhealthyEnvelope", ProcessHealthOutput(), success=False)
MetricsEnvelope = envelope("ProcessMetricsEnvelope", ProcessMetricsOutput())
