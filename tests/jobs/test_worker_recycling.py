"""When django-q2 replaces a worker process (settings ``JOB_WORKER_RECYCLE_TASKS`` and
``JOB_WORKER_MAX_RSS_MB``). A replaced process closes its live session CLIs: the
e2e test ``test_a_recycled_worker_closes_its_live_clis_and_the_next_turn_resumes``
runs one; here, what the settings make of the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHOW = (
    "import django; django.setup(); from django.conf import settings; import json; "
    "print(json.dumps([settings.Q_CLUSTER['recycle'], settings.Q_CLUSTER['max_rss']]))"
)


def _settings(tmp_path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOB_WORKER_")}
    return subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=ROOT,
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "claudesvc.settings",
            "CLAUDESVC_VAR_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_is_recycled_by_memory_and_only_after_many_tasks(tmp_path):
    shown = _settings(tmp_path)
    assert shown.returncode == 0, shown.stderr
    # Not django-q2's 500, nor the 50 it was: a task is a wake-up, and a recycled
    # process loses its live CLIs. Memory is what recycles it (kB for django-q2).
    assert json.loads(shown.stdout) == [5000, 1024 * 1024]
    shown = _settings(tmp_path, JOB_WORKER_RECYCLE_TASKS="20", JOB_WORKER_MAX_RSS_MB="300")
    assert json.loads(shown.stdout) == [20, 300 * 1024]


def test_a_bad_recycling_setting_stops_the_start_naming_it(tmp_path):
    shown = _settings(tmp_path, JOB_WORKER_MAX_RSS_MB="10")
    assert shown.returncode != 0 and "JOB_WORKER_MAX_RSS_MB=10 is below the minimum 64" in shown.stderr
    shown = _settings(tmp_path, JOB_WORKER_RECYCLE_TASKS="many")
    assert shown.returncode != 0 and "JOB_WORKER_RECYCLE_TASKS='many' is not an integer" in shown.stderr
