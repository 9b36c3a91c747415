"""The system checks that name a Redis or a database a job's CLI could open (``claudesvc.checks``)."""

from __future__ import annotations

import os
import subprocess
import sys

from claudesvc.checks import open_services
from tests.claudesvc.test_deployment import ROOT

SQLITE = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}
POSTGRES = {"ENGINE": "django.db.backends.postgresql", "NAME": "claudesvc", "HOST": "127.0.0.1"}


def _ids(**kwargs) -> list[str]:
    return [warning.id for warning in open_services(**kwargs)]


def test_a_redis_without_password_is_named():
    assert _ids(redis_url="redis://127.0.0.1:6379/0", database=SQLITE) == ["claudesvc.W001"]
    assert _ids(redis_url="redis://:s3cret@127.0.0.1:6379/0", database=SQLITE) == []
    assert _ids(redis_url="", database=SQLITE) == []
    assert _ids(redis_url="unix:///run/redis/redis.sock", database=SQLITE) == []  # no socket in the sandbox


def test_a_database_without_password_is_named_sqlite_needs_none():
    assert _ids(redis_url="", database={**POSTGRES, "PASSWORD": ""}) == ["claudesvc.W002"]
    assert _ids(redis_url="", database=POSTGRES) == ["claudesvc.W002"]
    assert _ids(redis_url="", database={**POSTGRES, "PASSWORD": "s3cret"}) == []
    for socket_dir in ("", "/var/run/postgresql"):  # a Unix socket: no file of it in the sandbox
        assert _ids(redis_url="", database={**POSTGRES, "HOST": socket_dir}) == []


def test_manage_py_check_shows_them():
    run = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert "claudesvc.W001" in run.stderr
