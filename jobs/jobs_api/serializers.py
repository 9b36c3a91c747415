"""Request and response shapes of the Jobs API (seed 000)."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from claudesvc.errors import ServiceError
from claudesvc.fields import FormOrJsonBooleanField, RefusesEmptyValues, StrictCharField, UtcDateTimeField
from jobs.fields import ModelField
from jobs.kinds import job_kind_or_none
from jobs.models import Artifact, Attachment, Job, JobKind, JobStatus

# Seed 000 knows four states; the core's others read as "failed" with a reason.
PUBLIC_STATUS = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.TIMEOUT: "failed",
    JobStatus.CANCELLED: "failed",
}


class JobCreateInput(RefusesEmptyValues):
    prompt = StrictCharField(
        max_length=settings.MAX_PROMPT_CHARS, trim_whitespace=False, help_text="The prompt for Claude"
    )
    model = ModelField()
    partial_messages = FormOrJsonBooleanField(
        required=False,
        default=False,
        help_text=(
            "Also store the CLI's partial messages: `stream_event` events whose "
            "`event.delta.text` is the answer as Claude writes it (see GET /jobs/{id}/events)"
        ),
    )

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value


# The multipart form, for the schema: the same fields plus the files. A field
# named "attachments[]" cannot be a class attribute, hence type().
JobCreateMultipartInput = type(
    "JobCreateMultipartInput",
    (JobCreateInput,),
    {
        "attachments[]": serializers.ListField(
            child=serializers.FileField(),
            required=False,
            max_length=settings.ATTACHMENTS_MAX_FILES,
            help_text=(
                f"Files for Claude to read (at most {settings.ATTACHMENTS_MAX_FILES}, each at most "
                f"{settings.ATTACHMENT_MAX_BYTES} bytes): images, PDF, UTF-8 text, audio, video. "
                "The type is decided from the content."
            ),
        )
    },
)


# Every part POST /jobs can use, for either job type.
FORM_FIELDS = {"prompt", "model", "type", "output", "language", "partial_messages"}
FILE_FIELDS = {"attachments[]", "attachments", "file"}


def refuse_unusable_parts(request) -> None:
    """A multipart part the service would drop is refused, named, rather than lost:
    a file part without a filename arrives as text, and unknown fields mean a typo."""
    if not request.content_type.startswith("multipart/"):
        return
    fields = set(request.POST)
    not_files = sorted(fields & FILE_FIELDS)
    if not_files:
        raise ServiceError(
            f"{not_files[0]}: a part without a filename is not a file; send files with a filename "
            f"(curl -F '{not_files[0]}=@path')",
            field=not_files[0],
        )
    unknown = sorted(fields - FORM_FIELDS)
    if unknown:
        raise ServiceError(
            f"unknown form field(s): {', '.join(unknown)} (POST /jobs takes {', '.join(sorted(FORM_FIELDS | FILE_FIELDS))})",
            field=unknown[0],
        )


class AttachmentOutput(serializers.ModelSerializer):
    type = serializers.CharField(source="content_type")

    class Meta:
        model = Attachment
        fields = ["name", "size", "type", "sha256"]


class ArtifactOutput(serializers.ModelSerializer):
    type = serializers.CharField(source="content_type")
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["name", "size", "type", "download_url"]

    def get_download_url(self, artifact: Artifact) -> str:
        return reverse("jobs:download", args=[artifact.job_id, artifact.name])


class JobCreatedOutput(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField(required=False)
    status = serializers.CharField()
    stream_url = serializers.CharField()
    events_url = serializers.CharField()


class UsageOutput(serializers.Serializer):
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    cache_creation_input_tokens = serializers.IntegerField(allow_null=True)
    cache_read_input_tokens = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.FloatField(allow_null=True)


class _KindDetailSchema(dict):
    """drf-spectacular's annotation of a kind's details field, resolved when the
    schema is built: the kind registers its serializer in its app's ``ready()``,
    possibly after this module was imported, and ``jobs`` never imports it."""

    def __init__(self, kind: str) -> None:
        super().__init__(field=None)
        self.kind = kind

    def __getitem__(self, key):
        if key == "field":
            spec = job_kind_or_none(self.kind)
            if spec is not None and spec.detail_serializer is not None:
                return spec.detail_serializer(allow_null=True)
            return serializers.DictField(allow_null=True)
        return super().__getitem__(key)


def kind_details(job: Job) -> dict | None:
    """A job's kind-specific details, rendered by the serializer its kind registered; None if none."""
    spec = job_kind_or_none(job.kind)
    if spec is None or spec.detail_serializer is None or spec.detail_of is None:
        return None
    row = spec.detail_of(job)
    return None if row is None else spec.detail_serializer(row).data


class JobOutput(serializers.ModelSerializer):
    type = serializers.CharField(source="kind")
    status = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    error_message = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()
    created_at = UtcDateTimeField()
    # Null until the job starts / ends.
    started_at = UtcDateTimeField(allow_null=True)
    finished_at = UtcDateTimeField(allow_null=True)
    stream_url = serializers.SerializerMethodField()
    events_url = serializers.SerializerMethodField()
    attachments = AttachmentOutput(many=True, read_only=True)
    artifacts = ArtifactOutput(many=True, read_only=True)
    transcription = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "type",
            "status",
            "model",
            "result",
            "error_message",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "num_turns",
            "usage",
            "stream_url",
            "events_url",
            "attachments",
            "artifacts",
            "transcription",
        ]

    def get_status(self, job: Job) -> str:
        return PUBLIC_STATUS[job.status]

    def get_result(self, job: Job) -> str | None:
        return job.result if job.status == JobStatus.COMPLETED else None

    def get_error_message(self, job: Job) -> str | None:
        return job.error_message or None

    @extend_schema_field(UsageOutput(allow_null=True))
    def get_usage(self, job: Job) -> dict | None:
        if job.usage is None and job.cost_usd is None:
            return None
        usage = job.usage or {}
        return {
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "cache_creation_input_tokens": usage.get("cache_creation_input_tokens"),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens"),
            "cost_usd": job.cost_usd,
        }

    def get_stream_url(self, job: Job) -> str:
        return reverse("jobs:stream", args=[job.pk])

    def get_transcription(self, job: Job) -> dict | None:
        """The transcription's details, for jobs of type transcription."""
        if job.kind != JobKind.TRANSCRIPTION:
            return None
        return kind_details(job)

    get_transcription._spectacular_annotation = _KindDetailSchema(JobKind.TRANSCRIPTION)

    def get_events_url(self, job: Job) -> str:
        return reverse("jobs:events", args=[job.pk])


def created_output(job: Job) -> dict:
    data = {
        "id": str(job.pk),
        "status": PUBLIC_STATUS[job.status],
        "stream_url": reverse("jobs:stream", args=[job.pk]),
        "events_url": reverse("jobs:events", args=[job.pk]),
    }
    if job.kind != "claude":
        data = {"id": data["id"], "type": job.kind, **{k: v for k, v in data.items() if k != "id"}}
    return data


class OffsetQuery(RefusesEmptyValues):
    offset = serializers.IntegerField(
        required=False, default=0, min_value=0, help_text="First event to return"
    )
    limit = serializers.IntegerField(required=False, default=1000, min_value=1, max_value=1000)


class JobListQuery(RefusesEmptyValues):
    status = serializers.ChoiceField(choices=sorted(set(PUBLIC_STATUS.values())), required=False)
    limit = serializers.IntegerField(required=False, default=100, min_value=1, max_value=1000)


class StreamOutput(serializers.Serializer):
    status = serializers.CharField()
    events = serializers.ListField(child=serializers.DictField())
    next_offset = serializers.IntegerField()


class EventsQuery(RefusesEmptyValues):
    last_event_id = serializers.IntegerField(
        required=False,
        min_value=-1,
        help_text="Resume after this event (for EventSource, which cannot set the Last-Event-ID header)",
    )
    offset = serializers.IntegerField(required=False, min_value=0, help_text="First event to send")
