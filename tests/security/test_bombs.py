"""Small inputs that would expand into something huge are refused, naming the
limit, with nothing kept: images of too many pixels, audio that decodes to
hours, JSON nested without end."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from jobs import tasks
from jobs.models import Job, JobStatus
from jobs.workspace import job_paths
from tests.samples import png_bytes
from transcription import media
from transcription.models import Transcription

pytestmark = pytest.mark.django_db


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (one grey row of data; the header is what counts)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
        + chunk(b"IEND", b"")
    )


def files_under(*roots) -> list[Path]:
    return [p for root in roots if Path(root).exists() for p in Path(root).rglob("*") if p.is_file()]


def nothing_kept() -> bool:
    return (
        Job.objects.count() == 0
        and files_under(django_settings.MEDIA_ROOT, django_settings.FILE_UPLOAD_TEMP_DIR) == []
    )


# -- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16000, 16000), (100_000, 1000), (1 << 20, 1 << 20)])
def test_an_image_of_too_many_pixels_is_refused_at_upload(client_for, owner_key, size):
    bomb = io.BytesIO(png_header_only(*size))
    bomb.name = "bomb.png"
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "Describe it", "attachments[]": bomb}, format="multipart"
    )
    assert response.status_code == 413, response.json()
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and error["field"] == "attachments[]"
    assert "IMAGE_MAX_PIXELS" in error["message"] and "bomb.png" in error["message"]
    assert nothing_kept()


def test_an_image_under_the_pixel_limit_is_taken(client_for, owner_key, settings):
    settings.IMAGE_MAX_PIXELS = 100
    fine = io.BytesIO(png_bytes(10, 10))
    fine.name = "fine.png"
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "Describe it", "attachments[]": fine}, format="multipart"
    )
    assert response.status_code == 202, response.json()
    over = io.BytesIO(png_bytes(10, 11))
    over.name = "over.png"
    response = client_for(owner_key).post(
        "/jobs", {"prompt": "Describe it", "attachments[]": over}, format="multipart"
    )
    assert response.status_code == 413
    assert "10 x 11 = 110 pixels" in response.json()["error"]["message"]


def test_an_inline_image_of_too_many_pixels_is_refused(client_for, owner_key):
    url = "data:image/png;base64," + base64.b64encode(png_header_only(16000, 16000)).decode()
    response = client_for(owner_key).post(
        "/v1/chat/completions",
        {
            "model": "sonnet",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]},
            ],
        },
        format="json",
    )
    assert response.status_code == 413, response.json()
    assert "IMAGE_MAX_PIXELS" in response.json()["error"]["message"]
    assert nothing_kept()


# -- audio -------------------------------------------------------------------------------


def silence(path: Path, seconds: int) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            str(seconds),
            str(path),
        ],
        check=True,
    )
    return path


def _transcribed(client, upload) -> Job:
    """Submit a transcription and run it as a worker would (the probe runs in the job, not the request)."""
    response = client.post("/jobs", {"type": "transcription", "file": upload}, format="multipart")
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["data"]["id"])
    assert tasks.run_next_job() == str(job.pk)
    job.refresh_from_db()
    return job


def _nothing_of_the_upload_kept(job: Job) -> bool:
    return (
        not Transcription.objects.get(pk=job.pk).audio
        and not (job_paths(job.pk).root / "transcription").exists()
    )


@pytest.mark.django_db(transaction=True)
def test_audio_longer_than_the_limit_fails_its_job_before_the_provider_hears_it(
    client_for, owner_key, settings, tmp_path, voxtral, monkeypatch
):
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    settings.TRANSCRIPTION_MAX_DURATION_SECONDS = 60
    flac = io.BytesIO(silence(tmp_path / "long.flac", 90).read_bytes())
    flac.name = "long.flac"
    job = _transcribed(client_for(owner_key), flac)
    assert job.status == JobStatus.FAILED
    assert "0:01:30" in job.error_message and "TRANSCRIPTION_MAX_DURATION_SECONDS" in job.error_message
    assert voxtral.requests == []
    assert _nothing_of_the_upload_kept(job)


def test_decoding_stops_at_the_limit_whatever_the_header_says(settings, tmp_path):
    settings.TRANSCRIPTION_MAX_DURATION_SECONDS = 10
    source = silence(tmp_path / "long.flac", 60)
    decoded, _ = media.normalise(source, tmp_path / "out.wav", demuxer="flac")
    assert 10 < decoded <= 11.05
    assert (tmp_path / "out.wav").stat().st_size < 12 * 16_000 * 2
    assert "TRANSCRIPTION_MAX_DURATION_SECONDS" in media.duration_problem(decoded)


@pytest.mark.django_db(transaction=True)
def test_ffmpeg_errors_reach_the_caller_without_server_paths(client_for, owner_key, voxtral, monkeypatch):
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    junk = io.BytesIO(b"ID3" + b"\x00" * 64 + b"\xff\xfb" + b"\x13" * 4000)
    junk.name = "broken.mp3"
    job = _transcribed(client_for(owner_key), junk)
    assert job.status == JobStatus.FAILED
    message = job.error_message
    assert message.startswith("The audio file "), message
    assert str(django_settings.FILE_UPLOAD_TEMP_DIR) not in message and "/tmp" not in message
    assert str(django_settings.JOBS_ROOT) not in message and str(django_settings.MEDIA_ROOT) not in message
    assert "@ 0x" not in message
    assert voxtral.requests == []
    assert _nothing_of_the_upload_kept(job)


# -- JSON --------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


ROUTES = {
    # route: (how its family says invalid_json)
    "/jobs": lambda body: body["error"]["code"] == "invalid_json",
    "/v1/chat/completions": lambda body: body["error"]["code"] == "invalid_json",
    "/v1/messages": lambda body: body["type"] == "error" and body["error"]["type"] == "invalid_request_error",
    "/api/rca": lambda body: body["error"]["code"] == "invalid_json",
    "/api/v1/claude/execute": lambda body: body["error"]["code"] == "VALIDATION_ERROR",
    "/api/v1/claude/execute/async": lambda body: body["error"]["code"] == "VALIDATION_ERROR",
    "/auth/login": lambda body: body["error"]["code"] == "invalid_json",
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("depth", [100_000, 65])
def test_json_nested_too_deep_is_invalid_json_on_every_route(client_for, owner_key, route, depth):
    body = '{"prompt": "hi", "model": "sonnet", "messages": ' + nested(depth) + "}"
    response = client_for(owner_key).post(route, body, content_type="application/json")
    assert response.status_code == 400, (response.status_code, response.content[:300])
    data = response.json()
    assert ROUTES[route](data), data
    assert "JSON_MAX_DEPTH" in json.dumps(data)
    assert Job.objects.count() == 0


def test_json_of_ordinary_depth_is_parsed(client_for, owner_key):
    body = json.dumps({"prompt": "hi", "extra": json.loads(nested(30))})
    response = client_for(owner_key).post("/jobs", body, content_type="application/json")
    assert response.json().get("error", {}).get("code") != "invalid_json"
