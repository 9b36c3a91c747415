"""A transcription job as a new user runs it: the seed's curl request against the
real server and worker, the fake Voxtral API on 127.0.0.1, the real Claude CLI
against the fake Anthropic API. A generated 25-minute recording becomes
several chunks, every output arrives, and the progress events count to 100 %."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import srt

from tests.e2e.test_jobs_e2e import sse_events
from tests.fakes.voxtral import random_script, tone_audio

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def meeting(tmp_path_factory) -> tuple[Path, list[str]]:
    """25 minutes of tone speech as a small mono mp3."""
    path = tmp_path_factory.mktemp("audio") / "meeting.mp3"
    timeline = tone_audio(path, random_script(2500, 2400), args=["-b:a", "24k"])
    assert timeline[-1].end > 25 * 60
    return path, [s.word for s in timeline]


def norm(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_the_seed_curl_request_transcribes_a_25_minute_meeting(
    service, owner_key, voxtral_server, meeting, tmp_path
):
    voxtral_server.reset()
    audio, words = meeting
    curl = subprocess.run(
        [
            "curl", "-s", "-X", "POST", f"{service.url}/jobs",
            "-H", f"X-API-Key: {owner_key.secret}",
            "-F", "type=transcription",
            "-F", f"file=@{audio}",
            "-F", 'output=["plain","compact","bullets","doc"]',
            "-F", "language=de",
        ],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    created = json.loads(curl.stdout)
    assert created["success"] is True, created
    job_id = created["data"]["id"]
    assert created["data"]["type"] == "transcription" and created["data"]["status"] == "pending"
    assert created["data"]["stream_url"] == f"/jobs/{job_id}/stream"

    with service.client(owner_key) as client:
        # The live event stream, to the end of the job.
        with client.stream("GET", f"/jobs/{job_id}/events") as response:
            streamed = [json.loads(e["data"]) for e in sse_events(response) if "id" in e]
        final = client.get(f"/jobs/{job_id}").json()["data"]
        assert final["status"] == "completed", (final, service.logs())

        progress = [e for e in streamed if e["type"] == "progress"]
        percents = [e["percent"] for e in progress]
        assert percents == sorted(percents) and percents[-1] == 100
        chunk_events = [e for e in progress if "chunks_done" in e]
        chunks = final["transcription"]["chunks"]
        assert chunks >= 3
        assert [e["chunks_done"] for e in chunk_events] == list(range(1, chunks + 1))
        assert all(e["message"] == f"Chunk {e['chunks_done']} of {chunks} transcribed" for e in chunk_events)
        assert streamed[-1]["type"] == "result"

        # The polling stream returns the same events.
        polled = client.get(f"/jobs/{job_id}/stream", params={"offset": 0}).json()["data"]
        assert polled["events"] == streamed and polled["status"] == "completed"

        # The provider got each chunk once, in its limits, with the language asked for.
        assert len(voxtral_server.transcribed()) == chunks
        assert all(r.duration <= 600.01 for r in voxtral_server.transcribed())
        assert {r.fields["language"] for r in voxtral_server.requests} == {"de"}

        info = final["transcription"]
        assert info["duration_seconds"] > 25 * 60 and info["language"] == "de"
        assert norm(info["transcript"]) == words
        assert info["summary"] and info["bullets"]
        files = [
            "bullets.md",
            "summary.md",
            "transcript.pdf",
            "transcript.srt",
            "transcript.txt",
            "transcript.vtt",
        ]
        assert info["files"] == files
        assert final["result"].startswith("## Summary") and final["result"].endswith(info["transcript"])
        # The Claude jobs behind the summary are not jobs of their own in the list.
        assert [j["id"] for j in client.get("/jobs").json()["data"]] == [job_id]

    # Every output is a download of the job, fetched as the seed shows: curl -O -J.
    assert sorted(a["name"] for a in final["artifacts"]) == files
    out = tmp_path / "downloads"
    out.mkdir()
    for name in files:
        subprocess.run(
            [
                "curl",
                "-sSf",
                "-O",
                "-J",
                f"{service.url}/jobs/{job_id}/download/{name}",
                "-H",
                f"X-API-Key: {owner_key.secret}",
            ],
            cwd=out,
            check=True,
            timeout=60,
        )
    assert sorted(p.name for p in out.iterdir()) == files
    assert (out / "transcript.pdf").read_bytes().startswith(b"%PDF-")
    assert norm((out / "transcript.txt").read_text()) == words
    cues = list(srt.parse((out / "transcript.srt").read_text()))
    assert cues[-1].end.total_seconds() > 24 * 60
    assert (out / "transcript.vtt").read_text().startswith("WEBVTT")
    pdf = subprocess.run(
        ["pdftotext", str(out / "transcript.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert pdf.startswith("Transcript of meeting.mp3")
    assert " ".join(words[:20]) in " ".join(norm(pdf)) and " ".join(words[-20:]) in " ".join(norm(pdf))
    assert "Summary" in pdf and "Key points" in pdf and "25:" in pdf


def test_a_transcription_can_be_deleted_while_it_runs(service, owner_key, voxtral_server, tmp_path):
    voxtral_server.reset()
    voxtral_server.delay = lambda rec: 30.0
    try:
        audio = tmp_path / "talk.ogg"
        tone_audio(audio, random_script(2501, 20))
        with service.client(owner_key) as client:
            with audio.open("rb") as fh:
                created = client.post(
                    "/jobs", data={"type": "transcription"}, files={"file": ("talk.ogg", fh)}
                )
            assert created.status_code == 202, created.text
            job_id = created.json()["data"]["id"]
            deadline = time.monotonic() + 60
            while not voxtral_server.requests and time.monotonic() < deadline:
                time.sleep(0.1)
            assert voxtral_server.requests, service.logs()
            assert client.delete(f"/jobs/{job_id}").json() == {"success": True, "message": "Job deleted"}
            assert client.get(f"/jobs/{job_id}").status_code == 404
        # The worker notices within a second, stops waiting for the provider and cleans up.
        stopped = f"job {job_id} was deleted while transcribing"
        deadline = time.monotonic() + 20
        while stopped not in service.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stopped in service.logs()
        assert not (Path(service.env["JOBS_ROOT"]) / job_id).exists()
    finally:
        voxtral_server.delay = None
