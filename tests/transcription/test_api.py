"""``POST /jobs`` with ``type=transcription``: what it accepts, what it refuses
(400 naming the field, nothing left behind), and how the job reads afterwards."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from jobs.models import Job, JobKind, JobStatus
from tests.fakes.voxtral import random_script, tone_audio
from transcription.models import Transcription

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    script = random_script(11, 10)
    for name in ["speech.mp3", "speech.wav", "speech.m4a", "speech.ogg", "speech.flac"]:
        tone_audio(folder / name, script)
    tone_audio(folder / "speech.webm", script, pipe=True)
    return folder


def upload(path: Path, name: str | None = None) -> io.BytesIO:
    data = io.BytesIO(path.read_bytes())
    data.name = name or path.name
    return data


def post(client, **fields):
    return client.post("/jobs", {"type": "transcription", **fields}, format="multipart")


def stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize(
    "name", ["speech.mp3", "speech.wav", "speech.m4a", "speech.ogg", "speech.flac", "speech.webm"]
)
def test_it_accepts_each_audio_format(client_for, owner_key, audio_dir, name):
    response = post(client_for(owner_key), file=upload(audio_dir / name))
    assert response.status_code == 202, response.json()
    data = response.json()["data"]
    assert list(data) == ["id", "type", "status", "stream_url", "events_url"]
    assert data["type"] == "transcription" and data["status"] == "pending"
    assert data["stream_url"] == f"/jobs/{data['id']}/stream"
    job = Job.objects.get(pk=data["id"])
    assert job.kind == JobKind.TRANSCRIPTION and job.status == JobStatus.PENDING
    row = job.transcription
    assert row.outputs == ["plain"] and row.language == "" and row.audio_name == name
    assert row.audio.read() == (audio_dir / name).read_bytes()
    assert row.audio.name.startswith(f"transcription/{job.pk}/")


def test_the_seed_request_with_every_output_and_a_language(client_for, owner_key, audio_dir):
    response = post(
        client_for(owner_key),
        file=upload(audio_dir / "speech.mp3", "meeting.mp3"),
        output='["plain","compact","bullets","doc"]',
        language="de",
    )
    assert response.status_code == 202
    row = Transcription.objects.get(pk=response.json()["data"]["id"])
    assert row.outputs == ["plain", "compact", "bullets", "doc"]
    assert row.language == "de"


def test_the_file_counts_not_its_name(client_for, owner_key, audio_dir):
    # An ogg named .txt is audio; a text file named .mp3 is not.
    assert post(client_for(owner_key), file=upload(audio_dir / "speech.ogg", "notes.txt")).status_code == 202
    fake = io.BytesIO(b"just some text, not audio at all\n" * 100)
    fake.name = "song.mp3"
    response = post(client_for(owner_key), file=fake)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "file"


def test_language_codes_are_normalised_and_outputs_deduplicated(client_for, owner_key, audio_dir):
    response = post(
        client_for(owner_key),
        file=upload(audio_dir / "speech.mp3"),
        language=" EN ",
        output='["doc","plain","doc"]',
    )
    assert response.status_code == 202
    row = Transcription.objects.get(pk=response.json()["data"]["id"])
    assert (row.language, row.outputs) == ("en", ["doc", "plain"])


def test_the_summary_model_is_the_seed_model_field(client_for, owner_key, audio_dir):
    response = post(client_for(owner_key), file=upload(audio_dir / "speech.mp3"), model="haiku")
    assert Job.objects.get(pk=response.json()["data"]["id"]).model == "haiku"


def _image(tmp_path) -> Path:
    path = tmp_path / "picture.png"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x64", "-frames:v", "1", str(path)],
        check=True,
    )
    return path


def _silent_video(tmp_path) -> Path:
    path = tmp_path / "video.webm"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=64x64:d=1",
            "-c:v",
            "mjpeg",
            "-f",
            "matroska",
            str(path),
        ],
        check=True,
    )
    return path


def _playlist(tmp_path, url: str) -> Path:
    path = tmp_path / "list.m3u8"
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}/segment.ts\n#EXT-X-ENDLIST\n")
    return path


BAD_REQUESTS = {
    "output not json": ({"output": "plain"}, "output", "JSON array"),
    "output not an array": ({"output": '"plain"'}, "output", "JSON array"),
    "output object": ({"output": '{"plain": true}'}, "output", "JSON array"),
    "output numbers": ({"output": "[1, 2]"}, "output", "strings"),
    "output empty": ({"output": "[]"}, "output", "at least one"),
    "output unknown": ({"output": '["plain","poem"]'}, "output", "'poem'"),
    "language unknown": ({"language": "xx"}, "language", "ISO 639-1"),
    "language three letters": ({"language": "deu"}, "language", "ISO 639-1"),
    "language with region": ({"language": "de-DE"}, "language", "ISO 639-1"),
    "model": ({"model": "gpt-4"}, "model", "not supported"),
    "type": ({"type": "video"}, "type", "claude"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_it_refuses_bad_fields_naming_them_and_leaves_nothing_behind(client_for, owner_key, audio_dir, case):
    fields, field, words = BAD_REQUESTS[case]
    response = client_for(owner_key).post(
        "/jobs",
        {"type": "transcription", "file": upload(audio_dir / "speech.mp3"), **fields},
        format="multipart",
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert Job.objects.count() == 0 and Transcription.objects.count() == 0
    assert stored_files() == []


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "text", "image", "video without sound", "binary junk", "playlist", "too big"]
)
def test_it_refuses_a_missing_or_unusable_file(
    client_for, owner_key, audio_dir, tmp_path, voxtral, settings, kind
):
    fields: dict = {}
    if kind == "empty":
        fields["file"] = io.BytesIO(b"")
        fields["file"].name = "empty.mp3"
    elif kind == "text":
        fields["file"] = io.BytesIO(b"WEBVTT\n\nnot audio")
        fields["file"].name = "meeting.webm"
    elif kind == "image":
        fields["file"] = upload(_image(tmp_path), "photo.m4a")
    elif kind == "video without sound":
        fields["file"] = upload(_silent_video(tmp_path))  # Matroska: not an accepted type
    elif kind == "binary junk":
        fields["file"] = io.BytesIO(b"\x00\x01\x02\x03" * 4096)
        fields["file"].name = "speech.mp3"
    elif kind == "playlist":
        # A playlist would make ffmpeg fetch its entries: it must not get that far.
        fields["file"] = upload(_playlist(tmp_path, voxtral.url), "list.mp3")
    elif kind == "too big":
        settings.TRANSCRIPTION_MAX_UPLOAD_MB = 1
        big = tmp_path / "big.wav"
        tone_audio(big, random_script(12, 80))
        assert big.stat().st_size > 1024 * 1024
        fields["file"] = upload(big)
    response = post(client_for(owner_key), **fields)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["field"] == "file", error
    assert Job.objects.count() == 0 and stored_files() == []
    assert voxtral.gets == []


def test_an_mp4_without_sound_is_accepted_the_request_runs_no_ffprobe(
    client_for, owner_key, tmp_path, monkeypatch
):
    # The request checks only cheap things (size, type by its bytes); ffprobe
    # runs in the job's probe step, which fails the job (tests/transcription/test_pipeline.py).
    monkeypatch.setattr(
        "transcription.media.probe_audio", lambda *a, **k: pytest.fail("ffprobe in the request")
    )
    video = tmp_path / "video.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x64:d=1", "-c:v", "mpeg4", str(video)],
        check=True,
    )
    response = post(client_for(owner_key), file=upload(video))
    assert response.status_code == 202, response.json()


def test_a_json_body_cannot_carry_a_file(client_for, owner_key):
    response = client_for(owner_key).post(
        "/jobs", {"type": "transcription", "file": "aGVsbG8="}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "file"
    assert Job.objects.count() == 0


def test_it_needs_a_key(client_for, audio_dir):
    assert post(client_for(None), file=upload(audio_dir / "speech.mp3")).status_code == 401
    assert Job.objects.count() == 0 and stored_files() == []


def test_claude_jobs_still_work_with_and_without_type(client_for, owner_key):
    client = client_for(owner_key)
    assert client.post("/jobs", {"prompt": "hi"}, format="json").status_code == 202
    response = client.post("/jobs", {"prompt": "hi", "type": "claude"}, format="json")
    assert response.status_code == 202
    assert "type" not in response.json()["data"]


def test_a_pending_transcription_reads_like_any_job(client_for, owner_key, other_key, audio_dir):
    client = client_for(owner_key)
    job_id = post(client, file=upload(audio_dir / "speech.mp3", "talk.mp3"), output='["plain","doc"]').json()[
        "data"
    ]["id"]
    data = client.get(f"/jobs/{job_id}").json()["data"]
    assert data["type"] == "transcription" and data["status"] == "pending"
    assert data["transcription"] == {
        "file_name": "talk.mp3",
        "outputs": ["plain", "doc"],
        "language": "",
        "duration_seconds": None,
        "chunks": None,
        "transcript": None,
        "summary": None,
        "bullets": None,
        "files": [],
    }
    listed = client.get("/jobs").json()["data"]
    assert [j["id"] for j in listed] == [job_id]
    assert client_for(other_key).get(f"/jobs/{job_id}").status_code == 404
    claude = client.post("/jobs", {"prompt": "hi"}, format="json").json()["data"]["id"]
    assert client.get(f"/jobs/{claude}").json()["data"]["transcription"] is None


def test_deleting_a_pending_transcription_removes_its_upload(client_for, owner_key, audio_dir):
    client = client_for(owner_key)
    job_id = post(client, file=upload(audio_dir / "speech.mp3")).json()["data"]["id"]
    assert len(stored_files()) == 1
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert stored_files() == []
    assert not Transcription.objects.exists()
