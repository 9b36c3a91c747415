"""Helpers for the attacks: run a job with the real CLI against the fake upstream,
choose the sandbox, read what the CLI's tools answered."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import runner, sandbox
from jobs.models import Job
from jobs.queue import job_claim_next
from jobs.services import job_create


@pytest.fixture(autouse=True)
def _fresh_sandbox_choice():
    """CLAUDE_SANDBOX is read once per process; each test decides again."""
    sandbox._state.cache_clear()
    yield
    sandbox._state.cache_clear()


@pytest.fixture
def bwrap_on(settings):
    settings.CLAUDE_SANDBOX = "bwrap"
    assert sandbox.sandbox_in_force() == "bwrap", "bubblewrap does not work on this machine"


def token(label: str) -> str:
    """A string that appears nowhere else, to look for later."""
    return f"{label}-{uuid.uuid4().hex}"


def run_job(prompt: str, *, policy: str = "safe", key=None, **kwargs) -> Job:
    if key is None:
        key, _ = api_key_create(name=token("key"), tool_policy=policy)
    job_create(caller=Caller(api_key=key), prompt=prompt, enqueue=False, **kwargs)
    job = job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def tool_results(job: Job) -> str:
    """Everything the CLI's tools answered in this job, as one string."""
    results = []
    for event in job.events.filter(type="user"):
        for block in event.data["message"]["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append(json.dumps(block.get("content")))
    return "\n".join(results)


def bash(command: str) -> str:
    """The fake upstream's directive for one Bash call."""
    return f"[[tool:Bash {json.dumps({'command': command})}]]"


def tool(name: str, **arguments) -> str:
    return f"[[tool:{name} {json.dumps(arguments)}]]"


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``.

    Read by ``grep`` in a process of its own, never by this one: ``root`` may hold
    the test database, and a process that opens and closes an SQLite file outside
    SQLite drops every POSIX lock its own connections hold on it. The service's
    processes could then checkpoint or rebuild the WAL index under this one's feet,
    and the database is corrupted ("database disk image is malformed"; see
    https://www.sqlite.org/howtocorrupt.html, section 2.2). ``grep -r`` skips
    symbolic links and what vanished meanwhile (a finished job's folder deleted in
    the background, workspace._remove_soon); both end up on its stderr.
    """
    done = subprocess.run(
        ["grep", "-r", "-l", "-F", "-e", needle, "--", str(root)], capture_output=True, timeout=120
    )
    assert done.returncode in (0, 1, 2), done.stderr  # 2: some file vanished or was unreadable
    return [Path(os.fsdecode(line)) for line in done.stdout.splitlines()]
