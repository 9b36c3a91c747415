"""``Job.options`` of a transcription job (checked by ``jobs.options`` when the job is created)."""

from __future__ import annotations

from typing import NotRequired, TypedDict


class TranscriptionOptions(TypedDict):
    outputs: list  # the Output values asked for
    language: NotRequired[str]  # ISO 639-1, or "" to detect
