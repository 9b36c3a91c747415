"""Attachments in, generated files out, as a user meets them: curl against the real
server, worker and CLI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_jobs_e2e import wait_done
from tests.samples import multipart, pdf_bytes, png_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CURL = shutil.which("curl")


def curl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CURL, "-sS", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def blocks(request: dict, kind: str) -> list[dict]:
    """Content blocks of ``kind`` inside the tool results of one upstream request."""
    found = []
    for message in request["body"]["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                found.extend(b for b in block["content"] if b.get("type") == kind)
    return found


def leftovers(service) -> dict[str, list]:
    media = Path(service.env["MEDIA_ROOT"])
    uploads = Path(service.env["FILE_UPLOAD_TEMP_DIR"])
    return {
        "uploads": sorted(uploads.iterdir()) if uploads.exists() else [],
        "deleted_but_open": deleted_open_files(service.processes[0].pid),
        "media": sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else [],
    }


def deleted_open_files(pid: int) -> list[str]:
    """Temporary files the server still holds open (an unfinished body spool would show here)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)"):
            held.append(target)
    return held


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_a_curl_upload_is_read_by_claude_and_its_output_downloads_with_curl(
    service, owner_key, upstream, tmp_path
):
    pdf, png = pdf_bytes("Quarterly report"), png_bytes(4, 4)
    (tmp_path / "report.pdf").write_bytes(pdf)
    (tmp_path / "chart.png").write_bytes(png)
    prompt = (
        "Analysiere diese Dateien "
        '[[tool:Read {"file_path": "attachments/report.pdf"}]] '
        '[[tool:Read {"file_path": "attachments/chart.png"}]] '
        '[[tool:Write {"file_path": "out/Zusammenfassung März.txt", "content": "Alles grün.\\n"}]]'
    )
    created = curl(
        "-X", "POST", f"{service.url}/jobs",
        "-H", f"X-API-Key: {owner_key.secret}",
        "--form-string", f"prompt={prompt}",
        "-F", "model=haiku",
        "-F", "attachments[]=@report.pdf",
        "-F", "attachments[]=@chart.png",
        cwd=tmp_path,
    )  # fmt: skip
    body = json.loads(created.stdout)
    assert body["success"] is True, body
    job_id = body["data"]["id"]

    with service.client(owner_key) as client:
        data = wait_done(client, job_id)
    assert data["status"] == "completed", (data, service.logs())
    assert [(a["name"], a["type"], a["size"]) for a in data["attachments"]] == [
        ("report.pdf", "application/pdf", len(pdf)),
        ("chart.png", "image/png", len(png)),
    ]

    # The CLI was told where the files are, opened both, and sent their content upstream.
    folder = Path(service.env["JOBS_ROOT"]) / job_id / "work" / "attachments"
    conversation = [
        r for r in upstream.main_requests() if str(folder) in json.dumps(r["body"]["messages"][0])
    ]
    assert conversation, "no upstream request listed the attachments"
    last = conversation[-1]
    assert f"{folder}/report.pdf" in json.dumps(last["body"]["messages"][0])
    documents = blocks(last, "document")
    images = blocks(last, "image")
    assert [base64.b64decode(d["source"]["data"]) for d in documents] == [pdf]
    assert [base64.b64decode(i["source"]["data"]) for i in images] == [png]

    # The file the job wrote is listed and downloads under its name.
    [artifact] = data["artifacts"]
    assert artifact["name"] == "Zusammenfassung März.txt"
    assert artifact["type"] == "text/plain; charset=utf-8"
    saved = tmp_path / "downloads"
    saved.mkdir()
    got = curl(
        "-O",
        "-J",
        "-D",
        "-",
        "-H",
        f"X-API-Key: {owner_key.secret}",
        f"{service.url}{artifact['download_url']}",
        cwd=saved,
    )
    headers = got.stdout.lower()
    assert "200" in headers.splitlines()[0], got.stdout + got.stderr
    assert "content-type: text/plain; charset=utf-8" in headers
    assert "filename*=utf-8''zusammenfassung%20m%c3%a4rz.txt" in headers
    # curl -J reads the ASCII ``filename`` (it ignores ``filename*``).
    assert [p.name for p in saved.iterdir()] == ["Zusammenfassung Marz.txt"]
    assert (saved / "Zusammenfassung Marz.txt").read_text() == "Alles grün.\n"

    with service.client(owner_key) as client:
        raw = client.get(artifact["download_url"])
        assert raw.content == "Alles grün.\n".encode()
        assert raw.headers["content-length"] == str(len(raw.content))
        for name in ["..%2F..%2Fwork%2Fattachments%2Freport.pdf", "%2Fetc%2Fpasswd", "nope.txt"]:
            assert client.get(f"/jobs/{job_id}/download/{name}").status_code == 404
        # Deleting the job takes its stored files along.
        assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert not (Path(service.env["MEDIA_ROOT"]) / "jobs" / job_id).exists()


def test_another_key_cannot_download(service, owner_key, other_key, upstream):
    with service.client(owner_key) as client:
        job_id = client.post(
            "/jobs", json={"prompt": '[[tool:Write {"file_path": "out/mine.txt", "content": "private"}]]'}
        ).json()["data"]["id"]
        data = wait_done(client, job_id)
        url = data["artifacts"][0]["download_url"]
        assert client.get(url).status_code == 200
    with service.client(other_key) as other:
        response = other.get(url)
        assert response.status_code == 404
        assert "private" not in response.text


def test_bad_uploads_get_their_error_from_the_live_server(service, owner_key):
    from jobs.models import Job

    before = leftovers(service)
    cases = [
        ([("attachments[]", f"f{i}.txt", b"x", "text/plain") for i in range(11)], 400, "at most 10 files"),
        ([("attachments[]", "a.zip", b"PK\x03\x04" + b"\0" * 64, "application/zip")], 415, "application/zip"),
        ([("attachments[]", "empty.txt", b"", "text/plain")], 400, "empty"),
        ([("attachments[]", "../../x.txt", b"x", "text/plain")], 400, "path separator"),
    ]
    with service.client(owner_key) as client:
        for files, status, words in cases:
            body, content_type = multipart({"prompt": "hi"}, files)
            response = client.post("/jobs", content=body, headers={"Content-Type": content_type})
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["field"] == "attachments[]" and words in error["message"]
    assert not Job.objects.filter(api_key=owner_key.row).exists()
    assert leftovers(service) == before


def test_a_500_mb_file_over_the_limit_is_refused_and_memory_stays_flat(service, owner_key):
    """The real limit on the real server: 413, nothing kept, server memory flat."""
    from django.conf import settings

    from jobs.models import Job

    limit = settings.ATTACHMENT_MAX_BYTES
    boundary = "bigboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachments[]"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode() + b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    chunk = b"\x00" * (1024 * 1024)
    count = limit // len(chunk) + 2
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for _ in range(count):
            yield chunk
        yield tail

    server = psutil.Process(service.processes[0].pid)
    idle = server.memory_info().rss
    peak = [idle]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = leftovers(service)
    try:
        with service.client(owner_key) as client:
            response = client.post(
                "/jobs",
                content=body(),
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + count * len(chunk) + len(tail)),
                },
                timeout=300,
            )
    finally:
        sampling.set()
        sampler.join()
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "file_too_large"
    assert "big.mp4" in response.json()["error"]["message"]
    assert not Job.objects.filter(api_key=owner_key.row).exists()
    assert leftovers(service) == before
    assert peak[0] - idle < 100 * 1024 * 1024, f"server grew by {(peak[0] - idle) // 2**20} MB"


def test_an_upload_cut_off_mid_body_leaves_nothing(service, owner_key):
    from jobs.models import Job

    before = leftovers(service)
    body, content_type = multipart(
        {"prompt": "cut"}, [("attachments[]", "half.txt", b"line of text\n" * 100_000, "text/plain")]
    )
    sent = body[: len(body) // 2]
    with socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            (
                "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-API-Key: {owner_key.secret}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + sent
        )
        time.sleep(0.5)
    # The client is gone; give the server a moment to notice, then look for traces.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and leftovers(service) != before:
        time.sleep(0.2)
    assert leftovers(service) == before
    assert not Job.objects.filter(api_key=owner_key.row).exists()
    with service.client(owner_key) as client:
        assert client.get("/health").status_code == 200
        good, good_type = multipart({"prompt": "after"}, [("attachments[]", "ok.txt", b"fine", "text/plain")])
        assert client.post("/jobs", content=good, headers={"Content-Type": good_type}).status_code == 202


def raw_request(service, head: str, body: bytes = b"") -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_a_body_larger_than_any_upload_is_refused_before_it_is_sent(service, owner_key):
    # The client announces 1 TB and sends nothing: the answer comes at once, no body is read.
    status, body = raw_request(
        service,
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {owner_key.secret}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {10**12}\r\nExpect: 100-continue\r\n\r\n",
    )
    assert status == 413
    assert body["success"] is False and body["error"]["code"] == "too_large"


def test_a_chunked_body_is_refused_with_411(service, owner_key):
    status, body = raw_request(
        service,
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {owner_key.secret}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        b'11\r\n{"prompt": "hi!"}\r\n0\r\n\r\n',
    )
    assert status == 411
    assert body["error"]["code"] == "length_required"
