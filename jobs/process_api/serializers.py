"""Request and response shapes of the Process API (seed 002), camelCase as the seed writes them."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from claudesvc.auth import owner_label
from claudesvc.envelopes import envelope_schema
from claudesvc.errors import ServiceError
from claudesvc.fields import RefusesEmptyValues, StrictCharField, StrictIntegerField, UtcDateTimeField
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


class ListQuery(RefusesEmptyValues):
    page = serializers.IntegerField(required=False, default=1, min_value=1)
    pageSize = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    status = serializers.ChoiceField(choices=PROCESS_STATUSES, required=False)


class MetricsQuery(RefusesEmptyValues):
    periodSeconds = serializers.IntegerField(required=False, default=3600, min_value=60, max_value=86_400)
    includeRecent = serializers.BooleanField(required=False, default=False)
    recentLimit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)


# -- output: the classes that render the answers are the ones the schema shows -------------


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


def _duration_ms(job: Job) -> int | None:
    if job.duration_ms is not None:
        return job.duration_ms
    if job.started_at and job.finished_at:
        return int((job.finished_at - job.started_at).total_seconds() * 1000)
    return None


# Fields read from the whole Job (source="*"), typed for the schema as what they render.


class ProcessIdField(serializers.CharField):
    def __init__(self, **kwargs):
        super().__init__(source="*", **kwargs)

    def to_representation(self, job: Job) -> str:
        return process_id(job)


class UserIdField(serializers.CharField):
    """The job owner's ``userId`` (``claudesvc.auth.owner_label``)."""

    def __init__(self, **kwargs):
        super().__init__(source="*", **kwargs)

    def to_representation(self, job: Job) -> str:
        return owner_label(api_key=job.api_key, user=job.user)


class ProcessStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=PROCESS_STATUSES, source="*", **kwargs)

    def to_representation(self, job: Job) -> str:
        return process_status(job)


class DurationMsField(serializers.IntegerField):
    def __init__(self, **kwargs):
        super().__init__(source="*", allow_null=True, **kwargs)

    def to_representation(self, job: Job) -> int | None:
        return _duration_ms(job)


class ExecutedViaField(serializers.ChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=["cli", "api"], source="options", **kwargs)

    def to_representation(self, options: dict) -> str:
        return (options or {}).get("executed_via", "cli")


# Seed 002's token counts, from the CLI's usage of a job.
class ProcessUsageOutput(serializers.Serializer):
    inputTokens = serializers.IntegerField()
    outputTokens = serializers.IntegerField()
    totalTokens = serializers.IntegerField()

    def to_representation(self, usage: dict) -> dict:
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


# The answer of a completed process (a Job); null for any other.
class ProcessParsedResponseOutput(serializers.Serializer):
    content = serializers.CharField(source="result")
    usage = ProcessUsageOutput(allow_null=True)

    def to_representation(self, job: Job) -> dict | None:
        return super().to_representation(job) if job.status == JobStatus.COMPLETED else None


# What a finished process (a Job) produced: the seed's execute body.
class ProcessResultOutput(serializers.Serializer):
    id = ProcessIdField()
    userId = UserIdField()
    status = ProcessStatusField()
    model = serializers.CharField()
    stdout = serializers.CharField(source="result")
    stderr = serializers.CharField()
    exitCode = serializers.IntegerField(source="exit_code", allow_null=True)
    error = serializers.SerializerMethodField()
    executedVia = ExecutedViaField(help_text="api: the CLI could not run; answered by the Messages API")
    startedAt = UtcDateTimeField(source="started_at", allow_null=True)
    completedAt = UtcDateTimeField(source="finished_at", allow_null=True)
    durationMs = DurationMsField()
    parsedResponse = ProcessParsedResponseOutput(source="*", allow_null=True)

    def get_error(self, job: Job) -> str | None:
        return job.error_message or None


# A process (a Job) in the seed's status shapes: keys that do not apply yet are
# left out; result only with context={"with_result": True}.
class ProcessOutput(serializers.Serializer):
    processId = ProcessIdField()
    status = ProcessStatusField()
    createdAt = UtcDateTimeField(source="created_at")
    startedAt = UtcDateTimeField(source="started_at", required=False)
    completedAt = UtcDateTimeField(source="finished_at", required=False)
    durationMs = DurationMsField(required=False)
    result = ProcessResultOutput(source="*", required=False)

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        if not job.started_at:
            del data["startedAt"]
        if not job.is_final:
            del data["completedAt"], data["durationMs"]
        if not (job.is_final and self.context.get("with_result")):
            del data["result"]
        return data


class ProcessAcceptedOutput(serializers.Serializer):
    processId = serializers.CharField()
    status = serializers.CharField(help_text="pending (async) or queued (every slot busy)")
    message = serializers.CharField()


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


@extend_schema_field(HealthChecksOutput(help_text="The checks of GET /health: database, broker, workers"))
class HealthChecksField(serializers.JSONField):
    """``/health``'s checks as they are (that view's shape, documented by its serializer)."""


class ProcessHealthOutput(serializers.Serializer):
    healthy = serializers.BooleanField()
    checks = HealthChecksField()
    cli = ProcessCliOutput()
    apiFallbackAvailable = serializers.BooleanField()
    activeProcesses = serializers.IntegerField()
    queueSize = serializers.IntegerField()
    maxConcurrentProcesses = serializers.IntegerField()


# One recently ended process (a Job); the measurements only when the worker took them.
class ProcessRecentMetricOutput(serializers.Serializer):
    processId = ProcessIdField()
    userId = UserIdField()
    durationMs = DurationMsField()
    peakMemoryBytes = serializers.IntegerField(source="peak_memory_bytes", required=False)
    cpuTimeMs = serializers.IntegerField(source="cpu_time_ms", required=False)
    inputSize = serializers.SerializerMethodField()
    outputSize = serializers.SerializerMethodField()
    success = serializers.SerializerMethodField()
    timestamp = UtcDateTimeField(source="finished_at")

    def get_inputSize(self, job: Job) -> int:
        return len(job.prompt) + len(job.system_prompt)

    def get_outputSize(self, job: Job) -> int:
        return len(job.result)

    def get_success(self, job: Job) -> bool:
        return job.status == JobStatus.COMPLETED

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        for name in ("peakMemoryBytes", "cpuTimeMs"):
            if data[name] is None:
                del data[name]
        return data


# Renders jobs.metrics.service_metrics' figures; recentMetrics from context["recent"] when given.
class ProcessMetricsOutput(serializers.Serializer):
    totalProcesses = serializers.IntegerField(source="total")
    successfulProcesses = serializers.IntegerField(source="successful")
    failedProcesses = serializers.IntegerField(source="failed")
    timedOutProcesses = serializers.IntegerField(source="timed_out")
    cancelledProcesses = serializers.IntegerField(source="cancelled")
    activeProcesses = serializers.IntegerField(source="active")
    queuedProcesses = serializers.IntegerField(source="queued")
    avgDurationMs = serializers.IntegerField(source="durations.avg", allow_null=True)
    minDurationMs = serializers.IntegerField(source="durations.min", allow_null=True)
    maxDurationMs = serializers.IntegerField(source="durations.max", allow_null=True)
    p95DurationMs = serializers.IntegerField(source="durations.p95", allow_null=True)
    p99DurationMs = serializers.IntegerField(source="durations.p99", allow_null=True)
    successRate = serializers.FloatField(
        source="success_rate", allow_null=True, help_text="0-1; null when nothing ended"
    )
    timestamp = UtcDateTimeField()
    periodSeconds = serializers.IntegerField(source="period_seconds")
    recentMetrics = ProcessRecentMetricOutput(many=True, required=False)

    def to_representation(self, metrics) -> dict:
        data = super().to_representation(metrics)  # no recentMetrics: the figures have none
        recent = self.context.get("recent")
        if recent is not None:
            data["recentMetrics"] = self.fields["recentMetrics"].to_representation(recent)
        return data


def process_result(job: Job) -> dict:
    """The execute body of a process (for code that renders outside a view: the WebSocket)."""
    return ProcessResultOutput(job).data


def process_summary(job: Job, *, with_result: bool = False) -> dict:
    return ProcessOutput(job, context={"with_result": with_result}).data


def envelope(name: str, data, *, success: bool = True) -> type[serializers.Serializer]:
    """The schema of ``envelope.ok``: seed 002's ``{"success", "data", "meta"}``."""
    return envelope_schema(name, data, success=success, meta=ProcessMetaOutput())


ExecuteEnvelope = envelope("ProcessExecuteEnvelope", ProcessResultOutput())
AcceptedEnvelope = envelope("ProcessAcceptedEnvelope", ProcessAcceptedOutput())
ProcessEnvelope = envelope("ProcessEnvelope", ProcessOutput())
ProcessListEnvelope = envelope("ProcessListEnvelope", ProcessListOutput())
CancelledEnvelope = envelope("ProcessCancelledEnvelope", ProcessCancelledOutput())
HealthEnvelope = envelope("ProcessHealthEnvelope", ProcessHealthOutput())
UnhealthyEnvelope = envelope("ProcessUnhealthyEnvelope", ProcessHealthOutput(), success=False)
MetricsEnvelope = envelope("ProcessMetricsEnvelope", ProcessMetricsOutput())
