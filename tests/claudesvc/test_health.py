"""GET /health: seed 000's fields, plus checks of the database, the broker and the workers."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from jobs.models import Worker

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _server_up_for_long(monkeypatch):
    # Past its start-up, when a missing worker is no longer excused.
    monkeypatch.setattr("claudesvc.health.STARTED", time.time() - 3600)


def test_health_keeps_the_seed_fields_and_adds_checks(client_for, live_worker):
    response = client_for(None).get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"] and body["claude_cli"].count(".") == 2
    assert body["timestamp"].endswith("Z") and body["uptime"] > 0
    checks = body["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    workers = checks["workers"]
    assert (workers["ok"], workers["live"], workers["busy"]) == (True, 1, 0)
    assert 0 <= workers["last_heartbeat_age_seconds"] < 30  # fresh; generous for a loaded CI machine
    # Nothing that names a host or a process goes to a caller without a key.
    assert "testhost" not in response.content.decode()


def test_health_is_503_once_no_worker_has_beaten_for_the_limit(client_for, settings, live_worker):
    settings.HEALTH_WORKER_MAX_AGE_SECONDS = 20
    Worker.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=15))
    assert client_for(None).get("/health").status_code == 200
    Worker.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=25))
    response = client_for(None).get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["workers"]["ok"] is False
    assert "no worker has sent a heartbeat" in body["checks"]["workers"]["error"]


def test_health_without_any_worker_is_503_once_the_server_is_past_its_start(client_for, settings):
    settings.HEALTH_WORKER_MAX_AGE_SECONDS = 5
    # The test process has run for longer than 5 s: a worker should have shown up by now.
    response = client_for(None).get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"]["last_heartbeat_age_seconds"] is None


def test_health_is_503_when_the_database_does_not_answer(client_for, live_worker, monkeypatch):
    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr("claudesvc.health._database", down)
    response = client_for(None).get("/health")
    assert response.status_code == 503
    database = response.json()["checks"]["database"]
    assert database["ok"] is False and database["error"] == "OperationalError: connection refused"


def test_health_is_503_when_the_broker_does_not_answer(client_for, live_worker, monkeypatch):
    class DeadBroker:
        def ping(self):
            raise ConnectionError("broker down")

    monkeypatch.setattr("claudesvc.health._broker", DeadBroker())
    response = client_for(None).get("/health")
    assert response.status_code == 503
    assert "broker down" in response.json()["checks"]["broker"]["error"]


def test_a_request_that_finds_the_database_gone_gets_a_clear_503(client_for, owner_key, monkeypatch):
    def gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("jobs.jobs_api.views.job_create_with_attachments", gone)
    response = client_for(owner_key).post("/jobs", {"prompt": "hi"}, format="json")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "service_unavailable"


def test_health_says_which_sandbox_the_cli_runs_in(client_for, live_worker, settings):
    # bubblewrap works on these machines (scripts/system-deps installs it): the default is in force.
    assert client_for(None).get("/health").json()["sandbox"] == "bwrap"
    settings.CLAUDE_SANDBOX = "none"
    from jobs import sandbox

    sandbox._state.cache_clear()  # probed once per process
    try:
        assert client_for(None).get("/health").json()["sandbox"] == "none"
    finally:
        sandbox._state.cache_clear()
