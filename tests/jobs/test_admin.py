"""The job admin: what it lists, what it shows, and that its deletes leave no file behind."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs.models import Artifact, Attachment, ClaudeSession, Job, JobEvent, JobStatus
from jobs.services import job_create
from jobs.sessions import session_create
from jobs.workspace import job_paths

pytestmark = pytest.mark.django_db


def make_job(key, **fields) -> Job:
    job = job_create(caller=Caller(api_key=key), prompt=fields.pop("prompt", "hi"), enqueue=False)
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
        job.refresh_from_db()
    return job


def with_files(job: Job) -> list[str]:
    """Give ``job`` a stored attachment and artifact and a working folder; their storage names."""
    names = []
    for model, name, body in [(Attachment, "in.txt", b"input"), (Artifact, "charts/out.md", b"# output")]:
        row = model.objects.create(
            job=job,
            name=name,
            content_type="text/plain",
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            file=ContentFile(body, name=name.rsplit("/", 1)[-1]),
        )
        names.append(row.file.name)
    paths = job_paths(job.pk)
    paths.output.mkdir(parents=True)
    (paths.output / "out.md").write_text("# output")
    return names


def assert_gone(job: Job, names: list[str]) -> None:
    assert not Job.objects.filter(pk=job.pk).exists()
    for name in names:
        assert not default_storage.exists(name), name
    assert not job_paths(job.pk).root.exists()


def test_the_changelist_shows_error_duration_cost_key_and_full_times(admin_client, owner_key):
    job = make_job(
        owner_key.row,
        status=JobStatus.FAILED,
        error_message="The Claude CLI failed: boom",
        duration_ms=12_345,
        cost_usd=0.0123,
        finished_at=timezone.now(),
    )
    page = admin_client.get("/admin/jobs/job/").content.decode()
    assert "The Claude CLI failed: boom" in page
    assert "12.3 s" in page and "0.0123" in page
    assert owner_key.row.prefix in page
    created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
    assert created in page  # to the second (and the millisecond), not to the minute


def test_the_changelist_filters_by_key_source_kind_model_and_status(admin_client, owner_key, other_key):
    mine = make_job(owner_key.row, source="compat", model="opus", status=JobStatus.COMPLETED)
    theirs = make_job(other_key.row)
    for query in [
        f"api_key__id__exact={owner_key.row.pk}",
        "source=compat",
        "model=opus",
        "status__exact=completed",
        "kind__exact=claude&source=compat",
    ]:
        page = admin_client.get(f"/admin/jobs/job/?{query}").content.decode()
        assert str(mine.pk)[:8] in page, query
        assert str(theirs.pk)[:8] not in page, query


def test_search_finds_error_messages_and_ids(admin_client, owner_key):
    failed = make_job(owner_key.row, status=JobStatus.FAILED, error_message="upstream HTTP 529 overloaded")
    other = make_job(owner_key.row)
    page = admin_client.get("/admin/jobs/job/", {"q": "529 overloaded"}).content.decode()
    assert str(failed.pk)[:8] in page and str(other.pk)[:8] not in page
    page = admin_client.get("/admin/jobs/job/", {"q": str(other.pk)}).content.decode()
    assert str(other.pk)[:8] in page and str(failed.pk)[:8] not in page
    assert admin_client.get("/admin/jobs/job/", {"q": "not-a-uuid"}).status_code == 200


def test_a_jobs_page_shows_usage_and_events_readably(admin_client, owner_key):
    job = make_job(
        owner_key.row,
        status=JobStatus.COMPLETED,
        usage={"input_tokens": 1234, "output_tokens": 56, "service_tier": "standard"},
        cost_usd=0.5,
    )
    JobEvent.objects.create(
        job=job,
        seq=0,
        type="assistant",
        data={"type": "assistant", "message": {"content": [{"type": "text", "text": "Hello <b>there</b>"}]}},
    )
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert re.search(r"<th>input_tokens</th><td>1234</td>", page)
    assert "<th>cost_usd</th><td>0.500000</td>" in page
    assert "Hello &lt;b&gt;there&lt;/b&gt;" in page  # the text, summarised and escaped
    assert "&quot;type&quot;: &quot;assistant&quot;" in page  # the JSON, indented
    assert "<b>there</b>" not in page


def test_a_running_jobs_page_refreshes_status_and_new_events(admin_client, owner_key):
    job = make_job(owner_key.row, status=JobStatus.RUNNING, started_at=timezone.now())
    JobEvent.objects.create(job=job, seq=0, type="system", data={"type": "system", "subtype": "init"})
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    live_url = f"/admin/jobs/job/{job.pk}/live/"
    assert f'data-url="{live_url}"' in page and "jobs/admin_job_live" in page
    JobEvent.objects.create(job=job, seq=1, type="progress", data={"type": "progress", "message": "half way"})
    live = admin_client.get(live_url, {"after": 0}).json()
    assert live["status"] == "running" and live["active"] is True
    assert (
        len(live["events"]) == 1 and "half way" in live["events"][0] and 'data-seq="1"' in live["events"][0]
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.COMPLETED)
    live = admin_client.get(live_url, {"after": 1}).json()
    assert live == {"status": "completed", "active": False, "duration": "-", "events": []}


def test_file_links_download_through_the_staff_only_route(admin_client, client, owner_key):
    job = make_job(owner_key.row)
    with_files(job)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "/media/" not in page
    artifact_url = f"/admin/jobs/job/{job.pk}/files/artifact/charts/out.md"
    attachment_url = f"/admin/jobs/job/{job.pk}/files/attachment/in.txt"
    assert f'href="{artifact_url}"' in page and f'href="{attachment_url}"' in page
    response = admin_client.get(artifact_url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"# output"
    assert response["Content-Disposition"] == 'attachment; filename="out.md"'
    assert b"".join(admin_client.get(attachment_url).streaming_content) == b"input"
    assert admin_client.get(f"/admin/jobs/job/{job.pk}/files/artifact/../in.txt").status_code == 404
    assert admin_client.get(f"/admin/jobs/job/{job.pk}/files/other/in.txt").status_code == 404
    # Not staff: the admin's login page, never the file.
    client.logout()
    user = get_user_model().objects.create_user("visitor", password="pw-123456")
    client.force_login(user)
    refused = client.get(artifact_url)
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]


def test_deleting_a_job_in_the_admin_removes_its_files(admin_client, owner_key):
    job = make_job(owner_key.row, status=JobStatus.COMPLETED)
    names = with_files(job)
    response = admin_client.post(f"/admin/jobs/job/{job.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert_gone(job, names)


def test_delete_selected_removes_every_jobs_files(admin_client, owner_key):
    jobs = [make_job(owner_key.row, status=JobStatus.COMPLETED) for _ in range(2)]
    names = [with_files(job) for job in jobs]
    admin_client.post(
        "/admin/jobs/job/",
        {"action": "delete_selected", "_selected_action": [str(j.pk) for j in jobs], "post": "yes"},
    )
    for job, stored in zip(jobs, names, strict=True):
        assert_gone(job, stored)


def test_deleting_a_key_removes_its_jobs_files_and_sessions(admin_client, owner_key, other_key, settings):
    job = make_job(owner_key.row, status=JobStatus.COMPLETED)
    names = with_files(job)
    session = session_create(caller=Caller(api_key=owner_key.row), external_id="s-1", model="haiku")
    session_dir = session.cwd
    kept = make_job(other_key.row)
    kept_names = with_files(kept)
    response = admin_client.post(f"/admin/apikeys/apikey/{owner_key.row.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ApiKey.objects.filter(pk=owner_key.row.pk).exists()
    assert_gone(job, names)
    assert not ClaudeSession.objects.filter(pk=session.pk).exists()
    from pathlib import Path

    assert not Path(session_dir).exists()
    assert all(default_storage.exists(name) for name in kept_names)


def test_deleting_keys_in_bulk_removes_their_jobs_files(admin_client):
    keys = [api_key_create(name=f"bulk-{i}")[0] for i in range(2)]
    jobs = [make_job(key, status=JobStatus.COMPLETED) for key in keys]
    names = [with_files(job) for job in jobs]
    admin_client.post(
        "/admin/apikeys/apikey/",
        {"action": "delete_selected", "_selected_action": [k.pk for k in keys], "post": "yes"},
    )
    assert not ApiKey.objects.filter(pk__in=[k.pk for k in keys]).exists()
    for job, stored in zip(jobs, names, strict=True):
        assert_gone(job, stored)


def test_the_jobs_changelist_and_change_page_render(admin_client, owner_key):
    job = make_job(owner_key.row)
    assert admin_client.get("/admin/jobs/job/").status_code == 200
    assert admin_client.get(f"/admin/jobs/job/{job.pk}/change/").status_code == 200


def test_the_cancel_action_cancels_pending_jobs(admin_client, owner_key):
    job = make_job(owner_key.row)
    admin_client.post("/admin/jobs/job/", {"action": "cancel", "_selected_action": [str(job.pk)]})
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_the_sessions_changelist_renders(admin_client, owner_key):
    session_create(caller=Caller(api_key=owner_key.row), external_id="s-2", model="haiku")
    assert admin_client.get("/admin/jobs/claudesession/").status_code == 200


def test_deleting_a_user_removes_the_files_of_their_jwt_jobs(admin_client, owner_key, jwt_user):
    user = jwt_user.row
    job = job_create(caller=Caller(user_id=user.pk), prompt="hi", enqueue=False)
    names = with_files(job)
    kept = make_job(owner_key.row)
    kept_names = with_files(kept)
    response = admin_client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert_gone(job, names)
    assert all(default_storage.exists(name) for name in kept_names)
