"""Jobs API views (seed 000). Thin: parse, call a service or selector, shape."""

from __future__ import annotations

import json
from collections.abc import Mapping

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser
from rest_framework.response import Response

from claudesvc.errors import ServiceError
from claudesvc.negotiation import AnyAcceptNegotiation
from claudesvc.parsers import BoundedJSONParser as JSONParser
from jobs.attachments import job_create_with_attachments
from jobs.jobs_api import serializers as s
from jobs.jobs_api.downloads import artifact_response
from jobs.jobs_api.envelope import DeletedEnvelope, ErrorEnvelope, JobsAPIView, envelope, ok
from jobs.jobs_api.serializers import refuse_unusable_parts
from jobs.kinds import job_kinds_creatable
from jobs.models import JobEvent
from jobs.selectors import artifact_get, job_events, job_get, job_list
from jobs.services import job_delete
from jobs.sse import KEEPALIVE, compact_json, frame, retry, sse_response
from jobs.streaming import Ended, Idle, follow_job
from jobs.uploads import ATTACHMENT_FIELDS, TRANSCRIPTION_FIELD, AttachmentMultiPartParser

JobCreatedEnvelope = envelope("JobCreatedEnvelope", s.JobCreatedOutput)
JobEnvelope = envelope("JobEnvelope", s.JobOutput)
JobListEnvelope = envelope("JobListEnvelope", s.JobOutput, many=True)
StreamEnvelope = envelope("StreamEnvelope", s.StreamOutput)
ERRORS = {
    400: OpenApiResponse(ErrorEnvelope, description="Invalid parameters"),
    401: OpenApiResponse(ErrorEnvelope, description="API key missing or invalid"),
}
NOT_FOUND = {404: OpenApiResponse(ErrorEnvelope, description="No such job for this key")}
UPLOAD_ERRORS = {
    411: OpenApiResponse(ErrorEnvelope, description="A body without Content-Length (chunked)"),
    413: OpenApiResponse(
        ErrorEnvelope, description="A file is larger than the per-file limit, or the body than any upload"
    ),
    415: OpenApiResponse(ErrorEnvelope, description="A file's content is not of an accepted type"),
}
LIMIT_ERRORS = {
    402: OpenApiResponse(ErrorEnvelope, description="The key's budget is spent (code budget_exceeded)"),
    429: OpenApiResponse(
        ErrorEnvelope,
        description="Too many requests (rate_limited), or too many active jobs (active_jobs_limit); see Retry-After",
    ),
}


def _form_schema() -> type[serializers.Serializer]:
    """The multipart body of POST /jobs for the schema: one flat form whose files are
    ``format: binary``, so /docs shows file pickers (a ``oneOf`` renders as a JSON box).
    Other job kinds (``jobs.kinds``: those with a ``create_input``) add their fields."""
    claude = s.JobCreateMultipartInput().fields
    others = job_kinds_creatable()
    fields = {
        "type": serializers.ChoiceField(
            choices=["claude", *(kind.name for kind in others)],
            default="claude",
            help_text=" ".join(
                [
                    "claude (default): prompt, model, attachments[].",
                    *(f"{kind.name}: {', '.join(_own_fields(kind))}" for kind in others),
                ]
            ),
        ),
        "prompt": serializers.CharField(
            required=False, help_text="The prompt for Claude (type=claude: required)"
        ),
        "model": claude["model"].__class__(help_text=claude["model"].help_text),
        "partial_messages": serializers.BooleanField(
            required=False, default=False, help_text=claude["partial_messages"].help_text
        ),
        "attachments[]": serializers.ListField(
            child=serializers.FileField(), required=False, help_text=claude["attachments[]"].help_text
        ),
    }
    for kind in others:
        own = kind.create_input().fields
        for name in _own_fields(kind):
            field = own[name]
            documented_as = (
                serializers.FileField if isinstance(field, serializers.FileField) else serializers.CharField
            )
            documented = documented_as(required=False, help_text=f"type={kind.name}: {field.help_text}")
            fields.setdefault(name, documented)
    return type("JobCreateForm", (serializers.Serializer,), fields)


def _own_fields(kind) -> list[str]:
    """The fields of a kind's create form that a Claude job does not have."""
    return [name for name in kind.create_input().fields if name not in ("type", "model")]


JobCreateForm = _form_schema()


class JobListCreateView(JobsAPIView):
    parser_classes = [JSONParser, AttachmentMultiPartParser, FormParser]

    @extend_schema(
        operation_id="jobs_create",
        summary="Create a Claude job, or (multipart, type=transcription) an audio transcription job",
        description=(
            "JSON, or multipart/form-data with files in `attachments[]`. The files are copied into the "
            "job's working directory and the prompt Claude receives lists them. Bad files are refused "
            "before anything is stored: too many (400), too large (413), a type not accepted (415), "
            "empty (400), a name with a path (400), a body cut off inside a file (400).\n\n"
            "With `type=transcription` (multipart): `file` (audio), `output` (JSON array of plain, "
            "compact, bullets, doc) and `language`; see the Transcription section of the README."
        ),
        request={
            "application/json": s.JobCreateInput,
            "multipart/form-data": JobCreateForm,
        },
        responses={202: JobCreatedEnvelope, **ERRORS, **UPLOAD_ERRORS, **LIMIT_ERRORS},
    )
    def post(self, request):
        uploads = [f for field in ATTACHMENT_FIELDS for f in request.FILES.getlist(field)]
        audio = request.FILES.getlist(TRANSCRIPTION_FIELD)
        try:
            refuse_unusable_parts(request)
            kind = (request.data.get("type") if isinstance(request.data, Mapping) else None) or "claude"
            spec = next((k for k in job_kinds_creatable() if k.name == kind), None)
            if spec is not None:
                if uploads:
                    raise ServiceError(
                        f"a {kind} job takes no attachments[] (its fields: {', '.join(_own_fields(spec))})",
                        field=ATTACHMENT_FIELDS[0],
                    )
                form = spec.create_input(data=request.data)
                form.is_valid(raise_exception=True)
                job = spec.create(caller=request.user, data=form.validated_data)
            elif kind == "claude":
                if audio:
                    raise ServiceError(
                        "file is for type=transcription; attach files to a Claude job as attachments[]",
                        field=TRANSCRIPTION_FIELD,
                    )
                data = s.JobCreateInput(data=request.data)
                data.is_valid(raise_exception=True)
                job = job_create_with_attachments(
                    caller=request.user,
                    prompt=data.validated_data["prompt"],
                    model=data.validated_data["model"],
                    uploads=uploads,
                    options={"partial_messages": True} if data.validated_data["partial_messages"] else None,
                )
            else:
                known = ", ".join(f'"{k.name}"' for k in job_kinds_creatable())
                raise ServiceError(f'type must be "claude" (the default) or one of {known}', field="type")
        finally:
            for upload in [*uploads, *audio]:
                upload.close()  # deletes the temporary file unless storage moved it
        return ok(s.created_output(job), status=202)

    @extend_schema(
        operation_id="jobs_list",
        summary="List this key's jobs, newest first",
        parameters=[s.JobListQuery],
        responses={200: JobListEnvelope, **ERRORS},
    )
    def get(self, request):
        query = s.JobListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        # The Claude jobs a transcription runs for its summary are part of it, not jobs of their own.
        jobs = (
            job_list(caller=request.user)
            .exclude(source="transcription")
            .select_related("transcription")
            .prefetch_related("attachments", "artifacts")
        )
        wanted = query.validated_data.get("status")
        if wanted:
            core = [k for k, v in s.PUBLIC_STATUS.items() if v == wanted]
            jobs = jobs.filter(status__in=core)
        return ok(s.JobOutput(jobs[: query.validated_data["limit"]], many=True).data)


class JobDetailView(JobsAPIView):
    @extend_schema(
        operation_id="jobs_retrieve",
        summary="Status and result of a job",
        responses={200: JobEnvelope, **ERRORS, **NOT_FOUND},
    )
    def get(self, request, job_id):
        return ok(s.JobOutput(job_get(caller=request.user, id=job_id)).data)

    @extend_schema(
        operation_id="jobs_delete",
        summary="Delete a job, stopping it if it runs",
        responses={200: DeletedEnvelope, **ERRORS, **NOT_FOUND},
    )
    def delete(self, request, job_id):
        job_delete(job=job_get(caller=request.user, id=job_id))
        return Response({"success": True, "message": "Job deleted"})


class JobStreamView(JobsAPIView):
    @extend_schema(
        operation_id="jobs_stream",
        summary="Events of a job from an offset (polling)",
        parameters=[s.OffsetQuery],
        responses={200: StreamEnvelope, **ERRORS, **NOT_FOUND},
    )
    def get(self, request, job_id):
        job = job_get(caller=request.user, id=job_id)
        query = s.OffsetQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        offset = query.validated_data["offset"]
        # Status first: events written before a final status are then all visible.
        status = s.PUBLIC_STATUS[job.status]
        events = job_events(job_id=job.pk, offset=offset, limit=query.validated_data["limit"])
        next_offset = events[-1].seq + 1 if events else offset
        page = {"status": status, "events": [e.data for e in events], "next_offset": next_offset}
        return ok(s.StreamOutput(page).data)


def _sse(event: JobEvent) -> str:
    return frame(compact_json(event.data), event=event.type, id=event.seq)


async def _sse_stream(job_id, offset: int):
    yield retry(2000)
    async for item in follow_job(job_id, offset=offset):
        if isinstance(item, JobEvent):
            yield _sse(item)
        elif isinstance(item, Idle):
            yield KEEPALIVE
        elif isinstance(item, Ended):
            status = s.PUBLIC_STATUS.get(item.status, "deleted") if item.status else "deleted"
            # json.dumps' default spacing: the bytes this frame has always had.
            yield frame(json.dumps({"status": status}), event="done")


class JobEventsView(JobsAPIView):
    # EventSource sends Accept: text/event-stream; errors stay JSON.
    content_negotiation_class = AnyAcceptNegotiation

    @extend_schema(
        operation_id="jobs_events",
        summary="Events of a job as Server-Sent Events, live until it ends",
        description=(
            "Each event: `id:` its sequence number, `event:` its type, `data:` the CLI's stream-json message. "
            "Reconnect with `Last-Event-ID` (or `?last_event_id=`) to resume after an event. The stream ends "
            "with `event: done` once the job has finished and every event was sent."
        ),
        parameters=[
            s.EventsQuery,
            OpenApiParameter("Last-Event-ID", OpenApiTypes.INT, OpenApiParameter.HEADER, required=False),
        ],
        responses={(200, "text/event-stream"): OpenApiTypes.STR, **ERRORS, **NOT_FOUND},
    )
    def get(self, request, job_id):
        job = job_get(caller=request.user, id=job_id)
        query = s.EventsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        offset = query.validated_data.get("offset", 0)
        last_id = request.headers.get("Last-Event-ID", query.validated_data.get("last_event_id"))
        if last_id is not None:
            try:
                offset = int(last_id) + 1
            except ValueError:
                raise ServiceError(
                    "Last-Event-ID must be an event id (an integer)", field="Last-Event-ID"
                ) from None
        return sse_response(_sse_stream(job.pk, max(offset, 0)))


class JobDownloadView(JobsAPIView):
    # The file's own type, whatever Accept says; errors stay JSON.
    content_negotiation_class = AnyAcceptNegotiation

    @extend_schema(
        operation_id="jobs_download",
        summary="Download a file the job produced",
        description=(
            "Streams one of the job's `artifacts` (see `GET /jobs/{id}`) with its type and "
            "`Content-Disposition: attachment` (RFC 6266, `filename*` for non-ASCII names), so "
            "`curl -O -J` saves it under its name. Only the job's owner may download; any other "
            "name, including ones that try to leave the job's folder, is 404."
        ),
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The file, with its own Content-Type"
            ),
            **ERRORS,
            **NOT_FOUND,
        },
    )
    def get(self, request, job_id, filename):
        job = job_get(caller=request.user, id=job_id)
        return artifact_response(request._request, artifact_get(job=job, name=filename))
