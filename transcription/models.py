"""What a transcription job was asked for and what it produced.

The ``Job`` row (kind ``transcription``) carries status, events and the text
``result`` like any other job; this row beside it keeps the uploaded audio
(in the configured storage, so any worker host can fetch it), the requested
outputs, and the structured results (segments, summary, key points).
"""

from __future__ import annotations

from django.db import models
from django.utils.text import get_valid_filename

from jobs.models import Job


class Output(models.TextChoices):
    PLAIN = "plain"  # transcript.txt, transcript.srt, transcript.vtt
    COMPACT = "compact"  # a summary written by Claude
    BULLETS = "bullets"  # key points written by Claude
    DOC = "doc"  # transcript.pdf


def audio_upload_to(instance: Transcription, filename: str) -> str:
    return f"transcription/{instance.job_id}/{get_valid_filename(filename) or 'audio'}"


class Transcription(models.Model):
    job = models.OneToOneField(Job, primary_key=True, on_delete=models.CASCADE, related_name="transcription")
    # Emptied once the worker has taken its own copy (see pipeline.FetchAudio).
    audio = models.FileField(upload_to=audio_upload_to, max_length=500, blank=True)
    audio_name = models.CharField(max_length=255)
    audio_size = models.BigIntegerField()
    outputs = models.JSONField(default=list)
    # ISO 639-1 code the caller gave; empty: the provider detects it.
    language = models.CharField(max_length=8, blank=True)

    detected_language = models.CharField(max_length=16, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(null=True, blank=True)
    text = models.TextField(blank=True)
    # [{"start": s, "end": s, "text": …}] in seconds from the start of the audio.
    segments = models.JSONField(default=list, blank=True)
    summary = models.TextField(blank=True)
    bullets = models.TextField(blank=True)
    files = models.JSONField(default=list, blank=True)
    # The Claude jobs that wrote the summary and key points; deleted with this one.
    claude_jobs = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"transcription of {self.audio_name} ({self.job_id})"

    @property
    def effective_language(self) -> str:
        return self.language or self.detected_language
