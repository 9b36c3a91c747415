"""The files a transcription job produces, written into the job's output folder.

``transcript.txt``/``.srt``/``.vtt`` for ``plain``, ``summary.md`` for
``compact``, ``bullets.md`` for ``bullets``, ``transcript.pdf`` for ``doc``.
The PDF comes from ``templates/transcription/transcript.html`` through
WeasyPrint; Django's autoescaping turns whatever the audio or the model said
into text, and the renderer may load nothing but ``data:`` URLs.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import srt
import webvtt
from django.template.loader import render_to_string
from weasyprint import HTML
from weasyprint.urls import URLFetcher

from jobs.artifacts import artifacts_collect
from transcription.stitching import Segment, plain_text

logger = logging.getLogger(__name__)

TEXT_FILE = "transcript.txt"
SRT_FILE = "transcript.srt"
VTT_FILE = "transcript.vtt"
SUMMARY_FILE = "summary.md"
BULLETS_FILE = "bullets.md"
PDF_FILE = "transcript.pdf"


def clock(seconds: float) -> str:
    """``1:02:03`` / ``02:03``: a timestamp for people."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _cue_text(text: str) -> str:
    # A blank line would end the cue early; "-->" would read as a timing line.
    return " ".join(text.split()).replace("-->", "->")


def write_text(folder: Path, segments: list[Segment]) -> Path:
    path = folder / TEXT_FILE
    path.write_text(plain_text(segments) + "\n", encoding="utf-8")
    return path


def write_srt(folder: Path, segments: list[Segment]) -> Path:
    subtitles = [
        srt.Subtitle(
            index=i,
            start=timedelta(seconds=seg.start),
            end=timedelta(seconds=max(seg.end, seg.start + 0.001)),
            content=_cue_text(seg.text),
        )
        for i, seg in enumerate(segments, start=1)
    ]
    path = folder / SRT_FILE
    path.write_text(srt.compose(subtitles, reindex=False), encoding="utf-8")
    return path


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def write_vtt(folder: Path, segments: list[Segment]) -> Path:
    vtt = webvtt.WebVTT(
        captions=[
            webvtt.Caption(
                start=_vtt_time(seg.start),
                end=_vtt_time(max(seg.end, seg.start + 0.001)),
                # Cue text is markup in WebVTT: "<" would open a tag.
                text=html.escape(_cue_text(seg.text), quote=False),
            )
            for seg in segments
        ]
    )
    path = folder / VTT_FILE
    path.write_text(vtt.content, encoding="utf-8")
    return path


def write_markdown(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


class NoRemoteFetcher(URLFetcher):
    """Loads ``data:`` URLs only: the PDF never reaches the network or the disk."""

    def __init__(self) -> None:
        super().__init__(allowed_protocols={"data"}, allow_redirects=False)
        self.refused: list[str] = []

    def fetch(self, url, headers=None):
        if not url.lower().startswith("data:"):
            self.refused.append(url)
            raise ValueError(f"external resources are not loaded: {url[:100]}")
        return super().fetch(url, headers)


@dataclass(frozen=True)
class Document:
    title: str
    created_at: datetime
    duration_seconds: float
    language: str
    segments: list[Segment]
    summary: str = ""
    bullets: str = ""


def render_pdf(folder: Path, doc: Document, *, fetcher: NoRemoteFetcher | None = None) -> Path:
    page = render_to_string(
        "transcription/transcript.html",
        {
            "title": doc.title,
            "created_at": doc.created_at,
            "duration": clock(doc.duration_seconds),
            "language": doc.language or "unknown",
            "summary": doc.summary.strip(),
            "bullets": _bullet_lines(doc.bullets),
            "segments": [{"at": clock(s.start), "text": s.text} for s in doc.segments],
        },
    )
    path = folder / PDF_FILE
    HTML(string=page, base_url=None, url_fetcher=fetcher or NoRemoteFetcher()).write_pdf(str(path))
    return path


def _bullet_lines(text: str) -> list[str]:
    """Claude's key points, one per line, without their list markers."""
    lines = []
    for line in text.splitlines():
        item = line.strip().lstrip("-*•").strip()
        if item:
            lines.append(item)
    return lines


def publish(job_id) -> list[str]:
    """Store the files of the job's output folder as its downloadable artifacts; returns their names."""
    names = [artifact.name for artifact in artifacts_collect(job_id=job_id)]
    logger.info("job %s: %s output file(s) ready: %s", job_id, len(names), ", ".join(names))
    return names
