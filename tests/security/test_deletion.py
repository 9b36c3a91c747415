"""Deleting a job (or its expiry) leaves no byte of it on disk: stored files,
work folder, CLI home with its transcript and saved tool outputs, scratch files."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import runner
from jobs.attachments import job_create_with_attachments
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.services import job_delete_expired
from jobs.uploads import ReceivedFile
from jobs.workspace import job_paths
from tests.security.conftest import files_containing, token, tool

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def places(tmp_path) -> list:
    """Where a job's bytes could be: the test's folders (jobs, media, CLI home,
    uploads) and the service's var folder (database included)."""
    return [tmp_path, django_settings.VAR_DIR]


def everywhere(tmp_path, needle: str) -> list:
    return [p for root in places(tmp_path) for p in files_containing(root, needle)]


def run_job_with_everything(key, secret: str):
    """A job whose prompt, attachment, transcript, tool output and artifact all hold ``secret``."""
    note = ReceivedFile("note.txt", "text/plain", 0, None)
    body = f"attachment {secret}\n".encode() * 50
    note.write(body)
    note.seek(0)
    note.size, note.content_type, note.sha256 = len(body), "text/plain", "0" * 64
    job = job_create_with_attachments(
        caller=Caller(api_key=key), prompt="placeholder", model=None, uploads=[note], enqueue=False
    )
    note.close()
    paths = job_paths(job.pk)
    prompt = (
        f"Remember {secret} "
        + tool("Read", file_path=str(paths.attachments / "note.txt"))
        + tool("Write", file_path=str(paths.output / "answer.md"), content=f"answer {secret}")
    )
    Job.objects.filter(pk=job.pk).update(prompt=prompt)
    job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.error_message
    return job


@pytest.mark.parametrize("keep", [0, 3600])
def test_delete_leaves_no_byte_of_the_job_on_disk(settings, tmp_path, client_for, owner_key, keep):
    settings.JOB_KEEP_WORKDIR_SECONDS = keep
    secret = token("delete-me")
    job = run_job_with_everything(owner_key.row, secret)
    found = everywhere(tmp_path, secret)
    assert found, "the job's bytes should be somewhere before the delete"
    if keep:
        # Its CLI home (transcript, saved tool outputs) is kept with the folder until then.
        assert any(job_paths(job.pk).home in p.parents for p in found)
    else:
        assert not job_paths(job.pk).root.exists()

    response = client_for(owner_key).delete(f"/jobs/{job.pk}")
    assert response.status_code in (200, 204), response.content
    assert everywhere(tmp_path, secret) == []


def test_expiry_leaves_no_byte_of_the_job_on_disk(settings, tmp_path):
    settings.JOB_KEEP_WORKDIR_SECONDS = 3600
    settings.JOB_RETENTION_DAYS = 1
    key, _ = api_key_create(name="expiring")
    secret = token("expire-me")
    job = run_job_with_everything(key, secret)
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(days=2))
    assert everywhere(tmp_path, secret)
    assert job_delete_expired() == 1
    assert everywhere(tmp_path, secret) == []


def test_the_work_copy_of_attachments_goes_when_the_job_ends(settings):
    settings.JOB_KEEP_WORKDIR_SECONDS = 3600
    key, _ = api_key_create(name="copies")
    job = run_job_with_everything(key, token("copy"))
    paths = job_paths(job.pk)
    assert paths.root.exists() and not paths.attachments.exists()
    assert job.attachments.count() == 1  # the stored original stays for the job's lifetime


def test_a_finished_jobs_folder_is_swept_after_the_keep_time(settings):
    from jobs.workspace import workspace_sweep

    settings.JOB_KEEP_WORKDIR_SECONDS = 3600
    key, _ = api_key_create(name="sweep")
    job = run_job_with_everything(key, token("sweep"))
    root = job_paths(job.pk).root
    assert workspace_sweep() == 0 and root.exists()
    settings.JOB_KEEP_WORKDIR_SECONDS = 1
    import os
    import time

    old = time.time() - 10
    os.utime(root / "finished", (old, old))
    assert workspace_sweep() == 1 and not root.exists()
