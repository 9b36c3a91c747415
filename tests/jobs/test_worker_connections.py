"""A worker's database connections: its threads keep theirs from one job to the next (a new
PostgreSQL connection costs a backend process and milliseconds before its first query)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import live
from jobs.models import Job
from jobs.services import job_create
from jobs.sessions import session_for_call

ROOT = Path(__file__).resolve().parents[2]


def _database_settings(command: str) -> dict:
    """``DATABASES["default"]`` as a process started as ``manage.py <command>`` on PostgreSQL sees it."""
    code = (
        "import json, os, sys; sys.argv = ['manage.py', sys.argv[1]];"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'claudesvc.settings';"
        "from django.conf import settings; d = settings.DATABASES['default'];"
        "print(json.dumps({k: d.get(k) for k in ('CONN_MAX_AGE', 'CONN_HEALTH_CHECKS', 'OPTIONS')}))"
    )
    env = {**os.environ, "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/claudesvc_nowhere"}
    env.pop("DB_CONN_MAX_AGE", None)
    out = subprocess.run(
        [sys.executable, "-c", code, command], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_process_keeps_checked_connections_and_a_web_server_pools_them():
    worker = _database_settings("qcluster")
    assert worker["CONN_MAX_AGE"] == 300 and worker["CONN_HEALTH_CHECKS"] is True
    assert "pool" not in (worker["OPTIONS"] or {})
    web = _database_settings("serve")
    assert "pool" in web["OPTIONS"] and web["CONN_HEALTH_CHECKS"] is True


@pytest.mark.django_db(transaction=True)
def test_a_live_turns_thread_keeps_its_connection_for_the_next_turn(monkeypatch):
    if "pool" in (connection.settings_dict.get("OPTIONS") or {}):
        pytest.skip("the test process pools its connections (scale-out); a worker process does not")
    key, _ = api_key_create(name="conn")
    caller = Caller(api_key=key)
    session = session_for_call(caller=caller, external_id="conn", model="haiku")
    job = job_create(caller=caller, prompt="hi", session=session, enqueue=False)
    seen = []

    def turn(job) -> None:
        Job.objects.filter(pk=job.pk).exists()
        seen.append(connection.connection)

    monkeypatch.setattr(live, "_turn_runner", turn)
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 300)
    connection.close()  # the next one is opened with these settings, as in a worker process
    live._run_claimed(job)
    live._run_claimed(job)
    assert seen[0] is seen[1] and connection.connection is seen[0], "kept from one turn to the next"

    # Where the settings say not to keep it (DB_CONN_MAX_AGE=0), each turn ends it.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    connection.close()
    live._run_claimed(job)
    assert connection.connection is None
