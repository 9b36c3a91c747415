"""Authentication and disclosure: login guessing is throttled; callers see no
server paths or tool internals; service-wide metrics are for staff."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from jobs.models import JobStatus
from tests.security.conftest import run_job, token

pytestmark = pytest.mark.django_db


@pytest.fixture
def login_limits(settings):
    settings.LOGIN_MAX_FAILURES_PER_USERNAME = 5
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 20
    settings.LOGIN_FAILURE_WINDOW_SECONDS = 900


def login(client, username: str, password: str, address: str):
    return client.post(
        "/auth/login",
        json.dumps({"username": username, "password": password}),
        content_type="application/json",
        REMOTE_ADDR=address,
    )


def fresh_address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


@pytest.mark.usefixtures("login_limits")
def test_guessing_a_password_is_throttled_per_username(client_for, caplog):
    username = token("alice")
    get_user_model().objects.create_user(username, password="the-right-password")
    client = client_for(None)
    caplog.set_level(logging.WARNING, logger="claudesvc.login_throttle")
    for _ in range(5):
        assert login(client, username, "wrong", fresh_address()).status_code == 401
    # From any address, the right password included: locked until the window ends.
    refused = login(client, username, "the-right-password", fresh_address())
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 900
    assert refused.json()["error"]["type"] == "rate_limit_error"  # the OpenAI SDK's RateLimitError
    assert "login failed for username" in caplog.text and "login refused" in caplog.text
    assert "the-right-password" not in caplog.text


@pytest.mark.usefixtures("login_limits")
def test_guessing_from_one_address_is_throttled_across_usernames(client_for):
    address = fresh_address()
    client = client_for(None)
    for _ in range(20):
        assert login(client, token("nobody"), "wrong", address).status_code == 401
    victim = token("bob")
    get_user_model().objects.create_user(victim, password="bobs-password-1")
    assert login(client, victim, "bobs-password-1", address).status_code == 429
    # Another address still gets in, and a success clears the username's count.
    assert login(client, victim, "bobs-password-1", fresh_address()).status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("upstream")
def test_the_init_event_shows_no_server_path():
    job = run_job("hi [[reply:hello]]")
    assert job.status == JobStatus.COMPLETED, job.error_message
    init = job.events.filter(type="system").first().data
    text = json.dumps(init)
    assert init.get("cwd") == "."
    for private in (django_settings.JOBS_ROOT, django_settings.CLAUDE_HOME, django_settings.BASE_DIR):
        assert str(private) not in text


def test_metrics_are_the_callers_own_unless_staff(client_for, owner_key, other_key):
    from jobs.process_api.views import service_metrics  # noqa: F401 - the view's own figures
    from tests.jobs.test_process_api import BASE, ended_job

    ended_job(owner_key, JobStatus.COMPLETED, 100)
    ended_job(other_key, JobStatus.COMPLETED, 200)
    ended_job(other_key, JobStatus.FAILED, 300)
    mine = client_for(owner_key).get(f"{BASE}/metrics").json()["data"]
    assert (mine["totalProcesses"], mine["maxDurationMs"]) == (1, 100)
    owner_key.row.owner = get_user_model().objects.create_user(token("ops"), is_staff=True)
    owner_key.row.save(update_fields=["owner"])
    everything = client_for(owner_key).get(f"{BASE}/metrics").json()["data"]
    assert (everything["totalProcesses"], everything["maxDurationMs"]) == (3, 300)


def test_secure_cookie_and_proxy_settings_come_from_the_environment(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    import claudesvc.settings as module

    monkeypatch.setenv("SESSION_COOKIE_SECURE", "true")
    monkeypatch.setenv("CSRF_COOKIE_SECURE", "1")
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", "HTTP_X_FORWARDED_PROTO,https")
    try:
        fresh = importlib.reload(module)
        assert fresh.SESSION_COOKIE_SECURE and fresh.CSRF_COOKIE_SECURE
        assert fresh.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")
        monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto")
        with pytest.raises(ImproperlyConfigured, match="SECURE_PROXY_SSL_HEADER"):
            importlib.reload(module)
    finally:
        monkeypatch.undo()
        importlib.reload(module)
