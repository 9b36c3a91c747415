"""The console's pages and the browser plumbing, through Django's test client:
session sign-in (user or pasted API key), the session cookie on the APIs (CSRF
for writes), owner-only pages, safe Markdown, languages, CORS, the /docs form."""

from __future__ import annotations

import pytest
from django.test import Client

from apikeys.services import api_key_revoke
from claudesvc.auth import Caller
from console.markdown import render_markdown
from jobs.models import Artifact, Job, JobStatus
from jobs.services import job_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(jwt_user) -> Client:
    """The console in a browser, signed in as the JWT user (a session, not a token)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(jwt_user.row)
    return client


def make_job(caller: Caller, **fields) -> Job:
    job = job_create(caller=caller, prompt="Hello there", model="haiku", enqueue=False)
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def test_pages_ask_for_sign_in_first(client):
    response = client.get("/console/jobs?status=failed&page=2")
    assert response.status_code == 302
    # The whole address comes back after signing in, query included.
    assert response["Location"] == "/console/login?next=/console/jobs%3Fstatus%3Dfailed%26page%3D2"


def test_sign_in_with_a_password_then_the_console_acts_for_that_user(jwt_user):
    client = Client()
    page = client.post(
        "/console/login",
        {
            "method": "password",
            "username": jwt_user.row.username,
            "password": jwt_user.password,
            "next": "/console/jobs",
        },
    )
    assert page.status_code == 302 and page["Location"] == "/console/jobs"
    assert jwt_user.row.username in client.get("/console/jobs").content.decode()
    wrong = Client().post(
        "/console/login", {"method": "password", "username": jwt_user.row.username, "password": "nope"}
    )
    assert wrong.status_code == 200 and b'role="alert"' in wrong.content


def test_sign_in_refuses_an_offsite_next_url(jwt_user):
    page = Client().post(
        "/console/login",
        {
            "method": "password",
            "username": jwt_user.row.username,
            "password": jwt_user.password,
            "next": "https://evil.example/",
        },
    )
    assert page["Location"] == "/console/"


def test_a_pasted_api_key_stands_for_the_session_until_revoked(owner_key):
    key, secret = owner_key.row, owner_key.secret
    client = Client()
    assert client.post("/console/login", {"method": "key", "api_key": secret})["Location"] == "/console/"
    job = make_job(Caller(api_key=key))
    # The APIs see the key's jobs through the cookie alone.
    listed = client.get("/jobs").json()["data"]
    assert [j["id"] for j in listed] == [str(job.pk)]
    # The secret itself is not kept in the session.
    assert secret not in str(dict(client.session))
    api_key_revoke(key=key)
    assert client.get("/jobs").status_code == 401
    assert client.get("/console/jobs").status_code == 302
    bad = Client().post("/console/login", {"method": "key", "api_key": "csk_live_nope"})
    assert bad.status_code == 200 and "not valid" in bad.content.decode()


def test_session_cookie_reads_the_api_but_writes_need_the_csrf_token(browser, jwt_user):
    assert browser.get("/jobs").status_code == 200
    refused = browser.post("/jobs", {"prompt": "hi"})
    assert refused.status_code == 403
    assert not Job.objects.exists()
    browser.get("/console/")  # sets the CSRF cookie, as the page does
    token = browser.cookies["csrftoken"].value
    created = browser.post("/jobs", {"prompt": "hi", "partial_messages": "true"}, HTTP_X_CSRFTOKEN=token)
    assert created.status_code == 202, created.content
    job = Job.objects.get()
    assert job.user_id == jwt_user.row.pk and job.api_key is None
    assert job.options == {"partial_messages": True}


def test_a_job_page_is_its_owners_alone(browser, jwt_user, other_key):
    mine = make_job(Caller(user_id=jwt_user.row.pk), status=JobStatus.COMPLETED, result="**done**")
    theirs = make_job(Caller(api_key=other_key.row), status=JobStatus.COMPLETED, result="secret")
    page = browser.get(f"/console/jobs/{mine.pk}")
    assert page.status_code == 200 and "<strong>done</strong>" in page.content.decode()
    assert browser.get(f"/console/jobs/{theirs.pk}").status_code == 404
    assert browser.get(f"/jobs/{theirs.pk}/events").status_code == 404


def test_results_show_artifacts_with_previews_only_for_safe_types(browser, jwt_user):
    from django.core.files.base import ContentFile

    job = make_job(Caller(user_id=jwt_user.row.pk), status=JobStatus.COMPLETED, result="ok", cost_usd=0.0123)
    for name, ctype, body in [
        ("notes.txt", "text/plain", b"plain <b>text</b>"),
        ("page.html", "text/html", b"<script>alert(1)</script>"),
        ("pic.png", "image/png", b"\x89PNG\r\n\x1a\n"),
    ]:
        art = Artifact(job=job, name=name, content_type=ctype, size=len(body), sha256="0" * 64)
        art.file.save(name, ContentFile(body), save=False)
        art.save()
    html = browser.get(f"/console/jobs/{job.pk}").content.decode()
    assert (
        "plain &lt;b&gt;text&lt;/b&gt;" in html and "&lt;script&gt;" in html and "<script>alert" not in html
    )
    assert f"/jobs/{job.pk}/download/notes.txt" in html and "$0.0123" in html
    png = browser.get(f"/console/jobs/{job.pk}/preview/pic.png")
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert (
        png["X-Content-Type-Options"] == "nosniff" and "default-src 'none'" in png["Content-Security-Policy"]
    )
    # HTML is never served inline from this origin.
    assert browser.get(f"/console/jobs/{job.pk}/preview/page.html").status_code == 404
    assert browser.get(f"/jobs/{job.pk}/download/notes.txt").status_code == 200


def test_cancel_needs_csrf_and_stops_the_job(browser, jwt_user):
    job = make_job(Caller(user_id=jwt_user.row.pk))
    assert browser.post(f"/console/jobs/{job.pk}/cancel").status_code == 403
    browser.get("/console/")
    token = browser.cookies["csrftoken"].value
    browser.post(f"/console/jobs/{job.pk}/cancel", HTTP_X_CSRFTOKEN=token)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED


def test_my_jobs_filters_and_pages(browser, jwt_user):
    caller = Caller(user_id=jwt_user.row.pk)
    for i in range(23):
        make_job(caller, status=JobStatus.COMPLETED if i % 2 else JobStatus.FAILED, prompt=f"task number {i}")
    first = browser.get("/console/jobs").content.decode()
    assert "Page 1 of 2" in first and first.count("/console/jobs/") >= 20
    failed = browser.get("/console/jobs?status=failed").content.decode()
    assert "task number 0" in failed and "task number 1<" not in failed
    assert "task number 7" in browser.get("/console/jobs?q=number+7").content.decode()
    assert "Page 2 of 2" in browser.get("/console/jobs?page=2").content.decode()


@pytest.mark.parametrize(
    ("markdown", "present", "absent"),
    [
        ("# Title\n\n*x*", ["<h1>Title</h1>", "<em>x</em>"], []),
        ("<script>alert(1)</script>", ["&lt;script&gt;"], ["<script>"]),
        ("[a](javascript:alert(1))", [], ['href="javascript']),
        ('<a href="javascript:x">a</a>', [], ["<a href"]),
        ("![x](https://tracker.example/p.png)", [], ["<img", "tracker.example"]),
        ("| a | b |\n|---|---|\n| 1 | 2 |", ["<table>", "<td>1</td>"], []),
    ],
)
def test_markdown_is_rendered_safely(markdown, present, absent):
    html = render_markdown(markdown)
    for part in present:
        assert part in html
    for part in absent:
        assert part not in html


def test_the_browser_language_picks_german_on_pages_but_not_on_the_apis(client, browser):
    german = client.get("/", HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")
    text = german.content.decode()
    assert '<html lang="de">' in text
    assert "Dedizierter AI-Service für Claude CLI Jobs" in text and "Konsole öffnen" in text
    english = client.get("/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert "A dedicated AI service for Claude CLI jobs" in english
    assert "Meine Jobs" in browser.get("/console/jobs", HTTP_ACCEPT_LANGUAGE="de").content.decode()
    # DRF has German messages of its own; the APIs keep English ones.
    refused = client.post("/jobs", {}, HTTP_ACCEPT_LANGUAGE="de", HTTP_X_API_KEY="csk_live_nope")
    assert "Invalid or revoked API key" in refused.content.decode()


def test_cors_is_off_by_default_and_follows_the_setting(client, settings):
    preflight = {"HTTP_ORIGIN": "https://app.example", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}
    assert "access-control-allow-origin" not in client.options("/jobs", **preflight).headers
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    response = client.options("/jobs", **preflight, HTTP_ACCESS_CONTROL_REQUEST_HEADERS="x-api-key")
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in response.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in response.headers


def test_docs_form_for_post_jobs_has_file_pickers(client):
    import yaml

    schema = yaml.safe_load(client.get("/openapi.yaml").content)
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert "oneOf" not in form
    props = form["properties"]
    assert props["file"]["format"] == "binary"
    assert props["attachments[]"]["items"]["format"] == "binary"
    assert {"prompt", "model", "type", "output", "language", "partial_messages"} <= set(props)
