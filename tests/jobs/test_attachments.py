"""Attachments on POST /jobs: accepted files, every bad input, and what the CLI gets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import runner
from jobs.attachments import job_create_with_attachments
from jobs.models import Attachment, Job, JobStatus
from jobs.queue import job_claim_next
from jobs.uploads import ReceivedFile
from jobs.workspace import job_paths
from tests.samples import SAMPLES, multipart, pdf_bytes, png_bytes

pytestmark = pytest.mark.django_db

FIELD = "attachments[]"


def post(client, fields=None, files=()):
    body, content_type = multipart({"prompt": "Look at these", **(fields or {})}, files)
    return client.post("/jobs", data=body, content_type=content_type)


def stored_files() -> list[Path]:
    root = Path(django_settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def temp_files() -> list[Path]:
    return list(Path(django_settings.FILE_UPLOAD_TEMP_DIR).iterdir())


def assert_nothing_left():
    assert not Job.objects.exists()
    assert not Attachment.objects.exists()
    assert stored_files() == []
    assert temp_files() == []


# -- accepted ------------------------------------------------------------------------


def test_it_stores_the_files_sent_with_a_prompt(client_for, owner_key):
    png, pdf, text = png_bytes(), pdf_bytes("Quarterly numbers"), "Zeile 1\nÜberschrift\n".encode()
    response = post(
        client_for(owner_key),
        {"model": "haiku"},
        [
            (FIELD, "chart.png", png, "image/png"),
            (FIELD, "report.pdf", pdf, "application/pdf"),
            (FIELD, "notes.md", text, "text/markdown"),
        ],
    )
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["data"]["id"])
    assert (job.prompt, job.model) == ("Look at these", "haiku")
    rows = list(job.attachments.order_by("id"))
    assert [(a.name, a.content_type, a.size) for a in rows] == [
        ("chart.png", "image/png", len(png)),
        ("report.pdf", "application/pdf", len(pdf)),
        ("notes.md", "text/markdown", len(text)),
    ]
    for row, content in zip(rows, [png, pdf, text], strict=True):
        assert row.sha256 == hashlib.sha256(content).hexdigest()
        assert row.file.name.startswith(f"jobs/{job.pk}/attachments/")
        with row.file.open("rb") as stored:
            assert stored.read() == content
    assert temp_files() == []
    detail = client_for(owner_key).get(f"/jobs/{job.pk}").json()["data"]
    assert [a["name"] for a in detail["attachments"]] == ["chart.png", "report.pdf", "notes.md"]
    assert detail["attachments"][0] == {
        "name": "chart.png",
        "size": len(png),
        "type": "image/png",
        "sha256": hashlib.sha256(png).hexdigest(),
    }


def test_the_plain_attachments_field_name_works_too(client_for, owner_key):
    response = post(client_for(owner_key), files=[("attachments", "a.txt", b"hello", "text/plain")])
    assert response.status_code == 202
    assert Attachment.objects.get().name == "a.txt"


def test_a_form_without_files_still_creates_a_job(client_for, owner_key):
    response = post(client_for(owner_key))
    assert response.status_code == 202
    assert not Attachment.objects.exists()


@pytest.mark.parametrize("expected", sorted(SAMPLES))
def test_each_accepted_type_is_recognised_from_its_content(client_for, owner_key, expected):
    name, content, declared = SAMPLES[expected]
    response = post(client_for(owner_key), files=[(FIELD, name, content, declared)])
    assert response.status_code == 202, response.json()
    assert Attachment.objects.get().content_type == expected


def test_the_content_decides_not_the_name_or_header(client_for, owner_key):
    response = post(client_for(owner_key), files=[(FIELD, "innocent.txt", png_bytes(), "text/plain")])
    assert response.status_code == 202
    assert Attachment.objects.get().content_type == "image/png"


@pytest.mark.parametrize(
    ("name", "declared", "content", "expected"),
    [
        ("data.csv", "application/octet-stream", b"a,b\n1,2\n", "text/csv"),
        ("page.html", "", b"<!doctype html><p>hi</p>", "text/html"),
        ("README.markdown", "text/plain", b"# Title\n", "text/markdown"),
        ("config.json", "application/json", b' \n{"a": [1, 2]}', "application/json"),
        ("list.JSON", "", b"[1]", "application/json"),
        ("LICENSE", "text/markdown", b"MIT License\n", "text/markdown"),
        ("script.py", "text/x-python", b"print('hi')\n", "text/plain"),
        ("voice.weba", "", SAMPLES["video/webm"][1], "audio/webm"),
        ("voice.webm", "audio/webm", SAMPLES["video/webm"][1], "audio/webm"),
        ("clip.mp4", "audio/mp4", SAMPLES["video/mp4"][1], "audio/mp4"),
    ],
)
def test_text_and_audio_or_video_containers_are_told_apart(
    client_for, owner_key, name, declared, content, expected
):
    response = post(client_for(owner_key), files=[(FIELD, name, content, declared)])
    assert response.status_code == 202, response.json()
    assert Attachment.objects.get().content_type == expected


def test_a_non_ascii_file_name_is_kept(client_for, owner_key):
    response = post(client_for(owner_key), files=[(FIELD, "Übersicht März.txt", b"x", "text/plain")])
    assert response.status_code == 202
    assert Attachment.objects.get().name == "Übersicht März.txt"


def test_exactly_the_limits_are_accepted(client_for, owner_key, settings):
    settings.ATTACHMENT_MAX_BYTES = 100
    files = [(FIELD, f"f{i}.txt", b"x" * 100, "text/plain") for i in range(settings.ATTACHMENTS_MAX_FILES)]
    assert post(client_for(owner_key), files=files).status_code == 202
    assert Attachment.objects.count() == 10


# -- refused, with nothing left behind ---------------------------------------------------


def assert_refused(response, status, code, *words):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["field"] == FIELD
    assert body["error"]["message"].startswith(f"{FIELD}: ")
    for word in words:
        assert word in body["error"]["message"]
    assert_nothing_left()


def test_eleven_files_are_refused(client_for, owner_key):
    files = [(FIELD, f"f{i}.txt", b"text", "text/plain") for i in range(11)]
    assert_refused(post(client_for(owner_key), files=files), 400, "invalid_request", "at most 10 files")


def test_a_file_over_the_size_limit_is_refused_with_413(client_for, owner_key, settings):
    settings.ATTACHMENT_MAX_BYTES = 2 * 1024 * 1024
    files = [
        (FIELD, "small.txt", b"fine", "text/plain"),
        (FIELD, "big.txt", b"x" * (settings.ATTACHMENT_MAX_BYTES + 1), "text/plain"),
    ]
    assert_refused(post(client_for(owner_key), files=files), 413, "file_too_large", "big.txt", "2.0 MB")


def test_the_size_limit_stops_the_file_while_it_is_received(owner_key, settings):
    """The handler refuses at the first byte past the limit; it never writes more than the limit."""
    from jobs.uploads import AttachmentUploadHandler

    settings.ATTACHMENT_MAX_BYTES = 10
    handler = AttachmentUploadHandler()
    handler.new_file(FIELD, "a.txt", "text/plain", None)
    handler.receive_data_chunk(b"12345", 0)
    with pytest.raises(Exception) as refused:
        handler.receive_data_chunk(b"123456", 5)
    assert refused.value.status == 413
    assert handler.file.tell() == 5
    handler.discard()
    assert temp_files() == []


@pytest.mark.parametrize(
    ("name", "content", "declared", "words"),
    [
        ("archive.zip", b"PK\x03\x04" + b"\x00" * 100, "application/zip", ["application/zip"]),
        ("tool.exe", b"MZ" + b"\x00" * 100, "image/png", ["application/x-msdownload"]),
        (
            "movie.mkv",
            b"\x1a\x45\xdf\xa3\x93\x42\x82\x88matroska" + b"\x00" * 100,
            "video/webm",
            ["matroska"],
        ),
        ("blob.bin", bytes(range(256)) * 4, "application/octet-stream", ["not of a recognised type"]),
        ("fake.txt", b"plain start " * 1000 + b"\xff\xfe broken", "text/plain", ["not valid UTF-8"]),
        ("data.json", b"hello, not json", "application/json", ["JSON"]),
    ],
)
def test_a_type_not_on_the_list_is_refused_with_415(client_for, owner_key, name, content, declared, words):
    response = post(client_for(owner_key), files=[(FIELD, name, content, declared)])
    assert_refused(response, 415, "unsupported_media_type", name, *words)


def test_an_empty_file_is_refused(client_for, owner_key):
    files = [(FIELD, "ok.txt", b"fine", "text/plain"), (FIELD, "empty.txt", b"", "text/plain")]
    assert_refused(post(client_for(owner_key), files=files), 400, "invalid_request", "empty.txt is empty")


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "sub/dir.txt",
        "..",
        ".",
        "C:\\temp\\x.txt",
        "..\\up.txt",
        "&#47;etc&#47;x",
        "tab\tname",
    ],
)
def test_a_file_name_with_a_path_is_refused(client_for, owner_key, name):
    response = post(client_for(owner_key), files=[(FIELD, name, b"x", "text/plain")])
    assert_refused(response, 400, "invalid_request", "file name")


def test_an_encoded_path_in_filename_star_is_refused(client_for, owner_key):
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{FIELD}\"; filename*=UTF-8''..%2F..%2Fx.txt\r\n"
        f"Content-Type: text/plain\r\n\r\nx\r\n--{boundary}--\r\n"
    ).encode()
    response = client_for(owner_key).post(
        "/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert_refused(response, 400, "invalid_request", "path separator")


def test_two_files_with_one_name_are_refused(client_for, owner_key):
    files = [(FIELD, "a.txt", b"1", "text/plain"), (FIELD, "a.txt", b"2", "text/plain")]
    assert_refused(
        post(client_for(owner_key), files=files), 400, "invalid_request", "two files are named a.txt"
    )


def test_a_body_cut_off_inside_a_file_is_refused(client_for, owner_key):
    body, content_type = multipart({"prompt": "hi"}, [(FIELD, "cut.txt", b"line\n" * 2000, "text/plain")])
    cut = body[: len(body) - 100]  # the closing boundary and the end of the file are missing
    response = client_for(owner_key).post("/jobs", data=cut, content_type=content_type)
    assert_refused(response, 400, "invalid_request", "cut.txt", "cut off")


def test_a_file_in_another_field_is_refused(client_for, owner_key):
    response = post(client_for(owner_key), files=[("upload", "a.txt", b"x", "text/plain")])
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "upload"
    assert_nothing_left()


def test_good_files_with_a_bad_prompt_leave_nothing(client_for, owner_key):
    body, content_type = multipart({"prompt": "  "}, [(FIELD, "a.png", png_bytes(), "image/png")])
    response = client_for(owner_key).post("/jobs", data=body, content_type=content_type)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "prompt"
    assert_nothing_left()


def test_files_already_stored_are_removed_when_the_job_cannot_be_written(owner_key, monkeypatch):
    uploads = []
    for name in ("a.txt", "b.txt"):
        upload = ReceivedFile(name, "text/plain", 1, None)
        upload.write(b"x")
        upload.seek(0)
        upload.sha256 = hashlib.sha256(b"x").hexdigest()
        uploads.append(upload)
    original_save = Attachment.save

    def save(self, *args, **kwargs):
        if self.name == "b.txt":
            raise RuntimeError("database went away")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(Attachment, "save", save)
    with pytest.raises(RuntimeError):
        job_create_with_attachments(
            caller=Caller(api_key=owner_key.row), prompt="p", model="", uploads=uploads
        )
    for upload in uploads:
        upload.close()
    assert_nothing_left()


def test_uploads_need_a_key(client_for):
    body, content_type = multipart({"prompt": "x"}, [(FIELD, "a.txt", b"x", "text/plain")])
    assert client_for(None).post("/jobs", data=body, content_type=content_type).status_code == 401
    assert temp_files() == []


# -- what the CLI gets ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("upstream")
def test_the_cli_finds_the_files_in_its_folder_and_the_prompt_lists_them(upstream):
    key, _ = api_key_create(name="files")
    note = ReceivedFile("note.txt", "text/plain", 0, None)
    note.write(b"The secret word is PAPAYA.")
    note.seek(0)
    note.size, note.content_type, note.sha256 = 26, "text/plain", "0" * 64
    job = job_create_with_attachments(
        caller=Caller(api_key=key), prompt="placeholder", model="haiku", uploads=[note], enqueue=False
    )
    note.close()
    target = job_paths(job.pk).attachments / "note.txt"
    Job.objects.filter(pk=job.pk).update(prompt=f'Read it [[tool:Read {{"file_path": "{target}"}}]]')
    job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.error_message
    # The work copy is gone once the job ended (storage keeps the original).
    assert not target.exists()
    results = [
        str(block.get("content"))
        for event in job.events.filter(type="user")
        for block in event.data["message"]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert any("PAPAYA" in r for r in results), results
    first_user = upstream.main_requests()[-1]["body"]["messages"][0]
    text = str(first_user["content"])
    assert str(target) in text and "text/plain" in text


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("upstream")
def test_a_missing_stored_file_fails_the_job_with_a_clear_message(owner_key):
    from django.core.files.storage import default_storage

    note = ReceivedFile("gone.txt", "text/plain", 0, None)
    note.write(b"x")
    note.seek(0)
    note.size, note.content_type, note.sha256 = 1, "text/plain", "0" * 64
    job = job_create_with_attachments(
        caller=Caller(api_key=owner_key.row), prompt="p", model="", uploads=[note], enqueue=False
    )
    note.close()
    default_storage.delete(job.attachments.get().file.name)
    job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "gone.txt could not be read from storage" in job.error_message
