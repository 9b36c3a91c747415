"""Log lines carry the request id, job id and key prefix; LOG_FORMAT=json makes each a JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.models import Job
from tests.e2e.conftest import _database_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


def test_a_submitted_job_keeps_its_request_id(db, owner_key, api_client):
    api_client.credentials(HTTP_X_API_KEY=owner_key.secret, HTTP_X_REQUEST_ID="req-from-the-client-42")
    response = api_client.post("/jobs", {"prompt": "hi"}, format="json")
    assert response.status_code == 202, response.content
    assert Job.objects.get(pk=response.json()["data"]["id"]).request_id == "req-from-the-client-42"


def test_request_lines_carry_the_request_id_and_key_prefix(db, owner_key, api_client, caplog):
    from claudesvc.logcontext import LogContextFilter

    caplog.handler.addFilter(LogContextFilter())
    api_client.credentials(HTTP_X_API_KEY=owner_key.secret, HTTP_X_REQUEST_ID="req-abc")
    with caplog.at_level("INFO"):
        job_id = api_client.post("/jobs", {"prompt": "hi"}, format="json").json()["data"]["id"]
    created = [r for r in caplog.records if "created by" in r.getMessage()]
    assert created and created[0].request_id == "req-abc"
    assert created[0].key_prefix == owner_key.row.prefix
    assert job_id in created[0].getMessage()


def _run_worker_task(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``run_next_job`` in a process of its own, as a django-q2 worker runs it."""
    code = (
        "import django; django.setup()\n"
        "from django_q.signals import pre_execute\n"
        "from jobs.tasks import run_next_job\n"
        "pre_execute.send(sender='django_q', func=run_next_job, task={})\n"
        "run_next_job()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.django_db(transaction=True)
def test_in_json_mode_every_line_of_a_jobs_run_carries_its_ids(owner_key, api_client, upstream, settings):
    api_client.credentials(HTTP_X_API_KEY=owner_key.secret, HTTP_X_REQUEST_ID="req-submit-77")
    job_id = api_client.post(
        "/jobs", {"prompt": "hi [[reply:done]]", "model": "haiku"}, format="json"
    ).json()["data"]["id"]
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "JOBS_ROOT": str(settings.JOBS_ROOT),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "CLAUDE_HOME": str(settings.CLAUDE_HOME),
        "DJANGO_SETTINGS_MODULE": "claudesvc.settings",
    }
    done = _run_worker_task(env)
    assert done.returncode == 0, done.stderr
    assert Job.objects.get(pk=job_id).status == "completed", done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"timestamp", "level", "logger", "message", "request_id", "job_id", "key_prefix"} <= set(
            record
        )
    mine = [r for r in records if r["job_id"] == job_id]
    # Claimed, CLI started, finished: the run's lines, pulled out by the job id.
    assert len(mine) >= 2, records
    assert any("CLI started" in r["message"] for r in mine), records
    assert all(r["request_id"] == "req-submit-77" for r in mine)
    assert all(r["key_prefix"] == owner_key.row.prefix for r in mine)


def test_text_stays_the_default_format():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, logging; django.setup(); logging.getLogger('jobs').warning('hello')",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "claudesvc.settings", "LOG_FORMAT": ""},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "LOG_FORMAT" in done.stderr  # an empty value is a mistake, said so
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, logging; django.setup(); logging.getLogger('jobs').warning('hello')",
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "claudesvc.settings"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING jobs [req=- job=- key=-] hello" in done.stderr
