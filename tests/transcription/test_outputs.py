"""The files of a transcription: SRT and VTT that parse, a PDF that shows the
transcript, escapes what the audio or the model said, and fetches nothing."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

import srt
import webvtt
from weasyprint import HTML

from transcription.outputs import (
    Document,
    NoRemoteFetcher,
    clock,
    render_pdf,
    write_srt,
    write_text,
    write_vtt,
)
from transcription.stitching import Segment

SEGMENTS = [
    Segment(0.0, 2.5, "Hello and welcome."),
    Segment(2.5, 61.25, "Arrows --> inside,\n\nblank lines and <b>tags</b> & ampersands."),
    Segment(3725.5, 3730.0, "Über eine Stunde später."),
]

SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3}"
VTT_TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


def pdf_text(path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_srt_has_numbered_cues_with_timestamps(tmp_path):
    text = write_srt(tmp_path, SEGMENTS).read_text()
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 3
    for number, block in enumerate(blocks, start=1):
        lines = block.splitlines()
        assert lines[0] == str(number)
        assert re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1])
        assert len(lines) == 3  # one line of text: a blank line inside would end the cue
    cues = list(srt.parse(text))
    assert cues[1].start == timedelta(seconds=2.5) and cues[1].end == timedelta(seconds=61.25)
    assert cues[2].start == timedelta(seconds=3725.5)
    assert "-->" not in cues[1].content


def test_vtt_is_valid_webvtt_with_escaped_cue_text(tmp_path):
    path = write_vtt(tmp_path, SEGMENTS)
    text = path.read_text()
    assert text.startswith("WEBVTT\n")
    timings = re.findall(f"^({VTT_TIME}) --> ({VTT_TIME})$", text, re.MULTILINE)
    assert timings == [
        ("00:00:00.000", "00:00:02.500"),
        ("00:00:02.500", "00:01:01.250"),
        ("01:02:05.500", "01:02:10.000"),
    ]
    assert "&lt;b&gt;tags&lt;/b&gt; &amp; ampersands" in text
    captions = webvtt.read(str(path))
    assert len(captions) == 3
    assert captions[2].text == "Über eine Stunde später."


def test_the_text_file_is_the_running_transcript(tmp_path):
    text = write_text(tmp_path, SEGMENTS).read_text()
    assert text.startswith("Hello and welcome. Arrows --> inside, blank lines")
    assert "\n\nÜber eine Stunde später.\n" in text


def test_clock():
    assert (clock(5), clock(65.9), clock(3725.5)) == ("00:05", "01:05", "1:02:05")


def test_the_pdf_shows_title_details_summary_points_and_timed_transcript(tmp_path):
    doc = Document(
        title="Transcript of meeting.mp3",
        created_at=datetime(2026, 1, 23, 12, 0, tzinfo=UTC),
        duration_seconds=3730,
        language="de",
        segments=SEGMENTS,
        summary="Ein kurzes Treffen.",
        bullets="- Erstens\n- Zweitens\n* Drittens",
    )
    text = pdf_text(render_pdf(tmp_path, doc))
    for expected in [
        "Transcript of meeting.mp3",
        "2026-01-23 12:00 UTC",
        "1:02:10",
        "de",
        "Summary",
        "Ein kurzes Treffen.",
        "Key points",
        "Erstens",
        "Drittens",
        "Hello and welcome.",
        "1:02:05",
        "Über eine Stunde später.",
    ]:
        assert expected in text, expected
    assert "- Erstens" not in text  # list markers become list items


def test_model_or_audio_text_is_escaped_and_nothing_is_fetched(tmp_path, voxtral):
    hostile = (
        f'<img src="{voxtral.url}/pixel.png"> <script>alert(1)</script> <a href="{voxtral.url}/x">link</a>'
    )
    doc = Document(
        title='<h1 style="color:red">Injected</h1>',
        created_at=datetime(2026, 1, 23, tzinfo=UTC),
        duration_seconds=1,
        language="en",
        segments=[Segment(0, 1, hostile)],
        summary=f'<link rel="stylesheet" href="{voxtral.url}/evil.css">',
        bullets="",
    )
    fetcher = NoRemoteFetcher()
    text = pdf_text(render_pdf(tmp_path, doc, fetcher=fetcher))
    assert '<img src="' in text and "<script>alert(1)</script>" in text
    assert '<h1 style="color:red">Injected</h1>' in text
    assert voxtral.gets == [] and fetcher.refused == []


def test_the_renderer_refuses_every_url_but_data(tmp_path, voxtral):
    page = (
        f'<link rel="stylesheet" href="{voxtral.url}/evil.css">'
        f'<img src="{voxtral.url}/pixel.png"><img src="file:///etc/hostname">'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
    )
    fetcher = NoRemoteFetcher()
    HTML(string=page, base_url=None, url_fetcher=fetcher).write_pdf(str(tmp_path / "x.pdf"))
    assert voxtral.gets == []
    assert sorted(fetcher.refused) == sorted(
        [f"{voxtral.url}/evil.css", f"{voxtral.url}/pixel.png", "file:///etc/hostname"]
    )
