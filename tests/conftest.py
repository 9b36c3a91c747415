"""Shared fixtures: a fake Anthropic upstream for the real CLI, the callers every
permission test needs (an owner key, an outsider's key, a factory for further
keys, a JWT user, a staff user and an admin client signed in as them; as
healthchecks' ``hc/test.py``), and per-test folders for job files."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from rest_framework.test import APIClient

from apikeys.models import ApiKey
from apikeys.services import api_key_create
from claudesvc.auth import jwt_issue
from tests.fakes.anthropic_upstream import CLI_ENV, FakeAnthropic
from tests.fakes.voxtral import FakeVoxtral


def pytest_collection_modifyitems(config, items):
    """Tests that run the live service (a server and a worker cluster on the test
    database) go last, in their own order. A live worker claims every pending job
    it can see, so a unit test that commits a pending job while one runs would
    race it."""
    live = [
        item
        for item in items
        if "service" in getattr(item, "fixturenames", ()) or item.get_closest_marker("e2e")
    ]
    if live:
        chosen = {id(item) for item in live}
        items[:] = [item for item in items if id(item) not in chosen] + live


@receiver(connection_created, dispatch_uid="tests.conftest.deadlock_victims")
def _the_test_side_outwaits_deadlocks(sender, connection, **kwargs) -> None:
    """PostgreSQL: this process waits 10 s before it looks for a deadlock (the
    default is 1 s, which the service's processes keep).

    A transactional test's teardown empties every table with one ``TRUNCATE``
    while the live service's workers go on (a deleted job's CLI being stopped,
    a heartbeat, the live poller's claim). ``TRUNCATE`` locks table after table,
    and a worker's transaction can hold one it wants while waiting for one it
    has; PostgreSQL then aborts the backend that looked first, which is now the
    worker's: it retries as after any database error, and the test's teardown
    goes through. Setting it needs a superuser (as the tests' ``postgres``);
    otherwise the default stays."""
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '10s'")
    except DatabaseError:
        pass  # not a superuser: a teardown may then lose a deadlock, as before


@pytest.fixture(autouse=True)
def _live_workers_beat(request):
    """Before a test of the live service: each of its worker processes has a fresh heartbeat row.

    pytest-django empties every table after a transactional test, the live
    workers' heartbeat rows included; they write them again within
    JOB_HEARTBEAT_SECONDS (1 s there). A test that starts in that second finds
    /health at 503 ("no worker has sent a heartbeat"), or a session's holder
    without its row: its next turn then goes to the queue, not to its live CLI."""
    if "service" not in request.fixturenames:
        return
    import httpx

    service = request.getfixturevalue("service")
    running = sum(1 for host in service.hosts.values() if host.process is not None)
    workers = running * int(service.env["JOB_WORKERS"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{service.url}/health", timeout=2)
            if answer.status_code == 200 and answer.json()["checks"]["workers"]["live"] >= workers:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeAnthropic]:
    """The fake Anthropic API; the CLI is pointed at it through the environment."""
    with FakeAnthropic() as fake:
        saved = {k: os.environ.get(k) for k in [*CLI_ENV, "ANTHROPIC_BASE_URL"]}
        os.environ.update(CLI_ENV, ANTHROPIC_BASE_URL=fake.url)
        yield fake
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def voxtral_server() -> Iterator[FakeVoxtral]:
    """The fake Voxtral transcription API, for the whole session (the e2e service uses it too)."""
    with FakeVoxtral() as fake:
        yield fake


@pytest.fixture
def voxtral(voxtral_server, settings) -> FakeVoxtral:
    """The fake Voxtral API, reset, with the service's settings pointing at it."""
    voxtral_server.reset()
    settings.VOXTRAL_BASE_URL = voxtral_server.url
    settings.MISTRAL_API_KEY = voxtral_server.api_key
    settings.VOXTRAL_RESPONSE_FORMAT = ""
    settings.VOXTRAL_RETRY_BACKOFF_MS = 20
    return voxtral_server


@pytest.fixture(autouse=True)
def _job_folders(settings, tmp_path):
    settings.JOBS_ROOT = tmp_path / "jobs"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CLAUDE_HOME = tmp_path / "claude-home"
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "uploads"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The manifest storage needs collectstatic first (make run and the Dockerfile do it).
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.WHITENOISE_USE_FINDERS = True
    # Login failures count in the cache, which in the scale-out run is Redis and
    # outlives a test run; tests/security sets real limits with names of its own.
    settings.LOGIN_MAX_FAILURES_PER_USERNAME = 10_000
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 10_000
    # Live sessions (jobs/live.py) keep a CLI and threads alive after a turn: off for
    # turns run inside the test process; the live service's workers (e2e) have them on.
    settings.SESSION_KEEPALIVE_SECONDS = 0


@dataclass
class Key:
    row: ApiKey
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_X_API_KEY": self.secret}


@pytest.fixture
def owner_key(db) -> Key:
    return Key(*api_key_create(name="owner"))


@pytest.fixture
def other_key(db) -> Key:
    return Key(*api_key_create(name="outsider"))


@pytest.fixture
def make_key(db):
    """Further keys, for tests that need more than the owner's and the outsider's:
    ``make_key("burst", max_active_jobs=3)``; fields past name, owner and tool
    policy are set on the row after it is created."""

    def make(name: str = "key", *, owner: Any = None, tool_policy: str = "", **fields: Any) -> Key:
        row, secret = api_key_create(name=name, owner=owner, tool_policy=tool_policy)
        if fields:
            ApiKey.objects.filter(pk=row.pk).update(**fields)
            row.refresh_from_db()
        return Key(row, secret)

    return make


@dataclass
class User:
    """A Django user who calls with a JWT from ``POST /auth/login``."""

    row: Any
    password: str

    @property
    def token(self) -> str:
        return jwt_issue(self.row)

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token}"}


@pytest.fixture
def jwt_user(db) -> User:
    """Seed 001's demo user: ``demo`` / ``demo-pass-123``, named Demo User."""
    password = "demo-pass-123"
    row = get_user_model().objects.create_user("demo", password=password, first_name="Demo", last_name="User")
    return User(row, password)


@pytest.fixture
def staff_user(db) -> User:
    """A superuser: the admin, and service-wide figures (a staff user's JWT or keys)."""
    password = "pw-123456"
    return User(get_user_model().objects.create_superuser("admin", "admin@example.com", password), password)


@pytest.fixture
def admin_client(client, staff_user):
    """Django's test client, signed in as the staff user."""
    client.force_login(staff_user.row)
    return client


@pytest.fixture
def client_for():
    def make(key: Key | None) -> APIClient:
        client = APIClient()
        if key is not None:
            client.credentials(HTTP_X_API_KEY=key.secret)
        return client

    return make


@pytest.fixture
def live_worker(db):
    """A worker process that sent a heartbeat just now (what /health looks for)."""
    from django.utils import timezone

    from jobs.models import Worker

    now = timezone.now()
    return Worker.objects.create(
        name="testhost:1", host="testhost", pid=1, cluster="test", started_at=now, heartbeat_at=now
    )
