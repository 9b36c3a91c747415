"""The transcription form of ``POST /jobs`` (seed 000) and the transcription part of a job's answer."""

from __future__ import annotations

import json

import pycountry
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from rest_framework import serializers

from claudesvc.fields import StrictCharField
from jobs.fields import ModelField
from jobs.filetypes import SNIFF_BYTES, FileSniffer, UnsupportedFileType
from jobs.models import JobStatus
from transcription.models import Output, Transcription

OUTPUT_NAMES = [o.value for o in Output]


def parse_outputs(raw: str) -> list[str]:
    """``'["plain","doc"]'`` -> ``["plain", "doc"]`` (each once, in the order given)."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise serializers.ValidationError(
            'Must be a JSON array of output names, e.g. ["plain","compact","bullets","doc"].'
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise serializers.ValidationError("Must be a JSON array of strings.")
    if not value:
        raise serializers.ValidationError(f"Name at least one output: {', '.join(OUTPUT_NAMES)}.")
    unknown = [v for v in value if v not in OUTPUT_NAMES]
    if unknown:
        raise serializers.ValidationError(f"Unknown output {unknown[0]!r}: use {', '.join(OUTPUT_NAMES)}.")
    return list(dict.fromkeys(value))


def sniff_upload(upload: UploadedFile) -> str:
    """The upload's type from its first bytes (its name proves nothing): an
    audio or video container, else ``UnsupportedFileType``. Cheap: ffprobe runs
    in the job's probe step (``transcription.steps.Probe``), not in the request."""
    head = upload.read(SNIFF_BYTES)
    upload.seek(0)
    sniffer = FileSniffer(name=upload.name or "", declared=getattr(upload, "content_type", "") or "")
    sniffer.feed(head)
    found = sniffer.finish()
    if not found.startswith(("audio/", "video/")):
        raise UnsupportedFileType(f"its content is {found}, not audio")
    return found


class TranscriptionCreateInput(serializers.Serializer):
    type = serializers.ChoiceField(choices=["transcription"], help_text='Must be "transcription"')
    file = serializers.FileField(
        allow_empty_file=False,
        help_text="Audio file: mp3, wav, m4a, ogg, flac or webm (checked by content), "
        f"at most {settings.TRANSCRIPTION_MAX_UPLOAD_MB} MB",
    )
    output = StrictCharField(
        required=False,
        default='["plain"]',
        help_text='JSON array of outputs: "plain" (transcript.txt/.srt/.vtt), "compact" (summary), '
        '"bullets" (key points), "doc" (transcript.pdf). Default ["plain"]',
    )
    language = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=8,
        help_text="Language of the audio as an ISO 639-1 code, e.g. de or en; detected when left out",
    )
    model = ModelField(
        help_text="Claude model for the summary and key points: haiku | sonnet | opus (default: sonnet)",
    )

    def validate_output(self, value: str) -> list[str]:
        return parse_outputs(value)

    def validate_language(self, value: str) -> str:
        code = value.strip().lower()
        if code and (len(code) != 2 or pycountry.languages.get(alpha_2=code) is None):
            raise serializers.ValidationError(
                f"{value!r} is not an ISO 639-1 language code (such as de or en)."
            )
        return code

    def validate_file(self, value: UploadedFile) -> UploadedFile:
        limit = settings.TRANSCRIPTION_MAX_UPLOAD_MB * 1024 * 1024
        if value.size > limit:
            raise serializers.ValidationError(
                f"The file is larger than {settings.TRANSCRIPTION_MAX_UPLOAD_MB} MB."
            )
        return value

    def validate(self, attrs: dict) -> dict:
        try:
            sniff_upload(attrs["file"])
        except UnsupportedFileType as exc:
            raise serializers.ValidationError({"file": [f"Not a usable audio file: {exc}"]}) from None
        return attrs


class TranscriptionOutput(serializers.Serializer):
    file_name = serializers.CharField(source="audio_name")
    outputs = serializers.ListField(child=serializers.CharField())
    language = serializers.CharField(
        source="effective_language", help_text="Given, or detected by the provider"
    )
    duration_seconds = serializers.FloatField(allow_null=True)
    chunks = serializers.IntegerField(source="chunk_count", allow_null=True)
    transcript = serializers.CharField(source="text", allow_null=True, help_text='With "plain"')
    summary = serializers.CharField(allow_null=True, help_text='With "compact"')
    bullets = serializers.CharField(allow_null=True, help_text='With "bullets"')
    files = serializers.ListField(
        child=serializers.CharField(), help_text="Files of the job, for GET /jobs/{id}/download/{filename}"
    )

    def to_representation(self, instance: Transcription) -> dict:
        data = super().to_representation(instance)
        wanted = set(instance.outputs)
        for name, output in (
            ("transcript", Output.PLAIN),
            ("summary", Output.COMPACT),
            ("bullets", Output.BULLETS),
        ):
            if output not in wanted or instance.job.status != JobStatus.COMPLETED:
                data[name] = None
        return data
