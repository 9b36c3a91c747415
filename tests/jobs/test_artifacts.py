"""Files a job writes: collection, listing, download, deletion and retention."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from claudesvc.auth import Caller
from claudesvc.errors import NotFound
from jobs import runner
from jobs.artifacts import artifacts_collect
from jobs.attachments import job_create_with_attachments
from jobs.models import Artifact, Attachment, Job, JobStatus
from jobs.queue import job_claim_next
from jobs.services import job_create, job_delete_expired
from jobs.uploads import ReceivedFile
from jobs.workspace import job_paths
from tests.samples import pdf_bytes, png_bytes

pytestmark = pytest.mark.django_db


def make_job(key, **kwargs) -> Job:
    return job_create(caller=Caller(api_key=key.row), prompt="p", enqueue=False, **kwargs)


def write(job: Job, name: str, content: bytes) -> Path:
    path = job_paths(job.pk).output / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def media_files() -> list[Path]:
    root = Path(django_settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- collecting ------------------------------------------------------------------------


def test_every_regular_file_of_the_output_folder_becomes_an_artifact(owner_key):
    job = make_job(owner_key)
    write(job, "report.md", b"# Report\n")
    write(job, "charts/a.png", png_bytes())
    write(job, "data.bin", bytes(range(256)))
    write(job, "summary.pdf", pdf_bytes())
    collected = artifacts_collect(job_id=job.pk)
    assert [(a.name, a.content_type, a.size) for a in collected] == [
        ("charts/a.png", "image/png", len(png_bytes())),
        ("data.bin", "application/octet-stream", 256),
        ("report.md", "text/markdown; charset=utf-8", 9),
        ("summary.pdf", "application/pdf", len(pdf_bytes())),
    ]
    report = Artifact.objects.get(job=job, name="report.md")
    assert report.sha256 == hashlib.sha256(b"# Report\n").hexdigest()
    assert report.file.name.startswith(f"jobs/{job.pk}/artifacts/")
    with report.file.open("rb") as stored:
        assert stored.read() == b"# Report\n"


def test_collecting_twice_keeps_one_artifact_and_picks_up_changes(owner_key):
    job = make_job(owner_key)
    path = write(job, "a.txt", b"one")
    first = artifacts_collect(job_id=job.pk)
    assert artifacts_collect(job_id=job.pk)[0].file.name == first[0].file.name
    path.write_bytes(b"two!")
    write(job, "b.txt", b"new")
    again = artifacts_collect(job_id=job.pk)
    assert [(a.name, a.size) for a in again] == [("a.txt", 4), ("b.txt", 3)]
    assert Artifact.objects.filter(job=job).count() == 2
    # The first version's stored file went when it was replaced.
    assert len(media_files()) == 2


def test_symlinks_and_what_they_point_at_are_not_collected(owner_key, tmp_path):
    job = make_job(owner_key)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    write(job, "real.txt", b"mine")
    out = job_paths(job.pk).output
    (out / "link.txt").symlink_to(secret)
    (out / "inner-link.txt").symlink_to(out / "real.txt")
    (out / "linked-dir").symlink_to(tmp_path)
    os.mkfifo(out / "pipe")
    assert [a.name for a in artifacts_collect(job_id=job.pk)] == ["real.txt"]


def test_an_output_folder_that_is_a_symlink_is_not_followed(owner_key, tmp_path):
    job = make_job(owner_key)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.txt").write_text("outside")
    work = job_paths(job.pk).work
    work.mkdir(parents=True)
    (work / "out").symlink_to(tmp_path / "elsewhere")
    assert artifacts_collect(job_id=job.pk) == []


def test_no_output_folder_means_no_artifacts(owner_key):
    assert artifacts_collect(job_id=make_job(owner_key).pk) == []


def test_collecting_for_a_deleted_job_is_not_found(owner_key):
    job = make_job(owner_key)
    write(job, "a.txt", b"x")
    Job.objects.filter(pk=job.pk).delete()
    with pytest.raises(NotFound):
        artifacts_collect(job_id=job.pk)
    assert media_files() == []


def test_the_number_of_artifacts_is_capped(owner_key, settings):
    settings.ARTIFACTS_MAX_FILES = 3
    job = make_job(owner_key)
    for i in range(5):
        write(job, f"f{i}.txt", b"x")
    assert [a.name for a in artifacts_collect(job_id=job.pk)] == ["f0.txt", "f1.txt", "f2.txt"]


# -- listing and downloading -----------------------------------------------------------------


@pytest.fixture
def finished(owner_key) -> Job:
    job = make_job(owner_key)
    write(job, "report.txt", "Ergebnis: grün\n".encode())
    write(job, "Übersicht 2026.pdf", pdf_bytes())
    write(job, "charts/a.png", png_bytes())
    artifacts_collect(job_id=job.pk)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED, finished_at=timezone.now())
    return job


def test_the_job_lists_its_files_with_download_urls(client_for, owner_key, finished):
    data = client_for(owner_key).get(f"/jobs/{finished.pk}").json()["data"]
    assert data["artifacts"] == [
        {
            "name": "charts/a.png",
            "size": len(png_bytes()),
            "type": "image/png",
            "download_url": f"/jobs/{finished.pk}/download/charts/a.png",
        },
        {
            "name": "report.txt",
            "size": len("Ergebnis: grün\n".encode()),
            "type": "text/plain; charset=utf-8",
            "download_url": f"/jobs/{finished.pk}/download/report.txt",
        },
        {
            "name": "Übersicht 2026.pdf",
            "size": len(pdf_bytes()),
            "type": "application/pdf",
            "download_url": f"/jobs/{finished.pk}/download/%C3%9Cbersicht%202026.pdf",
        },
    ]
    listed = client_for(owner_key).get("/jobs").json()["data"][0]
    assert [a["name"] for a in listed["artifacts"]] == ["charts/a.png", "report.txt", "Übersicht 2026.pdf"]


def test_a_file_downloads_with_its_type_and_name(client_for, owner_key, finished):
    response = client_for(owner_key).get(f"/jobs/{finished.pk}/download/report.txt")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == "Ergebnis: grün\n".encode()
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="report.txt"'
    assert response["Content-Length"] == str(len("Ergebnis: grün\n".encode()))
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_non_ascii_name_gets_an_ascii_fallback_and_filename_star(client_for, owner_key, finished):
    url = f"/jobs/{finished.pk}/download/{quote('Übersicht 2026.pdf')}"
    response = client_for(owner_key).get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == (
        "attachment; filename=\"Ubersicht 2026.pdf\"; filename*=UTF-8''%C3%9Cbersicht%202026.pdf"
    )
    assert b"".join(response.streaming_content) == pdf_bytes()


def test_a_file_in_a_sub_folder_downloads_under_its_base_name(client_for, owner_key, finished):
    response = client_for(owner_key).get(f"/jobs/{finished.pk}/download/charts/a.png")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="a.png"'


def test_any_accept_header_gets_the_file(client_for, owner_key, finished):
    response = client_for(owner_key).get(
        f"/jobs/{finished.pk}/download/report.txt", HTTP_ACCEPT="application/octet-stream"
    )
    assert response.status_code == 200


def test_another_key_cannot_download(client_for, other_key, finished):
    response = client_for(other_key).get(f"/jobs/{finished.pk}/download/report.txt")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client_for(None).get(f"/jobs/{finished.pk}/download/report.txt").status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "missing.txt",
        "../../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "charts%2F..%2F..%2Freport.txt",
        "charts/../report.txt",
        "..",
        "REPORT.TXT",
        "report.txt%00.png",
    ],
)
def test_names_that_are_not_the_jobs_files_are_not_found(client_for, owner_key, finished, name):
    response = client_for(owner_key).get(f"/jobs/{finished.pk}/download/{name}")
    assert response.status_code == 404
    assert response.json()["success"] is False


def test_a_symlink_the_job_made_cannot_be_downloaded(client_for, owner_key, tmp_path):
    job = make_job(owner_key)
    (tmp_path / "secret").write_text("TOP SECRET")
    out = job_paths(job.pk).output
    out.mkdir(parents=True)
    (out / "secret.txt").symlink_to(tmp_path / "secret")
    artifacts_collect(job_id=job.pk)
    assert client_for(owner_key).get(f"/jobs/{job.pk}/download/secret.txt").status_code == 404


# -- deleting ---------------------------------------------------------------------------------


def with_attachment(key) -> Job:
    upload = ReceivedFile("in.txt", "text/plain", 0, None)
    upload.write(b"input")
    upload.seek(0)
    upload.size, upload.content_type, upload.sha256 = 5, "text/plain", "0" * 64
    job = job_create_with_attachments(caller=Caller(api_key=key.row), prompt="p", model="", uploads=[upload])
    upload.close()
    write(job, "out.txt", b"output")
    artifacts_collect(job_id=job.pk)
    return job


def test_deleting_a_job_deletes_its_files(client_for, owner_key):
    job = with_attachment(owner_key)
    kept = with_attachment(owner_key)
    assert len(media_files()) == 4
    assert client_for(owner_key).delete(f"/jobs/{job.pk}").status_code == 200
    assert not Attachment.objects.filter(job_id=job.pk).exists()
    assert not Artifact.objects.filter(job_id=job.pk).exists()
    assert all(str(kept.pk) in str(p) for p in media_files())
    assert len(media_files()) == 2
    assert not (Path(django_settings.MEDIA_ROOT) / "jobs" / str(job.pk)).exists()
    assert not job_paths(job.pk).root.exists()


def test_expired_jobs_are_deleted_with_their_files(owner_key, settings):
    settings.JOB_RETENTION_DAYS = 7
    old = with_attachment(owner_key)
    recent = with_attachment(owner_key)
    old_but_running = with_attachment(owner_key)
    now = timezone.now()
    Job.objects.filter(pk=old.pk).update(status=JobStatus.COMPLETED, finished_at=now - timedelta(days=8))
    Job.objects.filter(pk=recent.pk).update(status=JobStatus.FAILED, finished_at=now - timedelta(days=6))
    Job.objects.filter(pk=old_but_running.pk).update(status=JobStatus.RUNNING)
    Job.objects.filter(pk=old_but_running.pk).update(created_at=now - timedelta(days=30))
    assert job_delete_expired() == 1
    assert set(Job.objects.values_list("pk", flat=True)) == {recent.pk, old_but_running.pk}
    assert not any(str(old.pk) in str(p) for p in media_files())
    assert len(media_files()) == 4


def test_retention_zero_keeps_everything(owner_key, settings):
    settings.JOB_RETENTION_DAYS = 0
    job = with_attachment(owner_key)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, finished_at=timezone.now() - timedelta(days=999)
    )
    assert job_delete_expired() == 0
    assert Job.objects.filter(pk=job.pk).exists()


def test_a_schedule_runs_the_retention_cleanup():
    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="jobs.tasks.delete_expired_jobs")
    assert schedule.repeats == -1 and schedule.schedule_type == Schedule.HOURLY
    assert import_string(schedule.func)() == 0


# -- the runner collects -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("upstream")
def test_a_file_the_job_writes_is_an_artifact_when_it_finishes(owner_key):
    job = job_create(caller=Caller(api_key=owner_key.row), prompt="placeholder", enqueue=False)
    target = job_paths(job.pk).output / "answer.md"
    Job.objects.filter(pk=job.pk).update(
        prompt=f'Write it [[tool:Write {{"file_path": "{target}", "content": "# Answer\\n42\\n"}}]]'
    )
    job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.error_message
    artifact = Artifact.objects.get(job=job)
    assert (artifact.name, artifact.content_type) == ("answer.md", "text/markdown; charset=utf-8")
    with artifact.file.open("rb") as stored:
        assert stored.read() == b"# Answer\n42\n"


def test_the_admin_job_page_shows_its_files(admin_client, owner_key):
    job = with_attachment(owner_key)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200
    assert "in.txt" in page.content.decode() and "out.txt" in page.content.decode()
