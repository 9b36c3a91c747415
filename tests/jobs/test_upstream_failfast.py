"""A dead or failing upstream fails a job in seconds (CLAUDE_API_MAX_RETRIES, CLAUDE_API_TIMEOUT_MS)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import runner
from jobs.models import Job, JobStatus
from jobs.queue import job_claim_next
from jobs.services import job_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def run(prompt: str) -> tuple[Job, float]:
    key, _ = api_key_create(name="failfast")
    job_create(caller=Caller(api_key=key), prompt=prompt, enqueue=False)
    job = job_claim_next()
    started = time.monotonic()
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job, time.monotonic() - started


def test_an_upstream_that_keeps_failing_fails_the_job_in_seconds_naming_the_status(upstream, settings):
    # 529 (overloaded) is what the CLI retries: CLAUDE_API_MAX_RETRIES bounds it.
    job, took = run("Busy [[error:529]]")
    assert job.status == JobStatus.FAILED
    assert "529" in job.error_message
    assert took < 30, f"took {took:.1f} s"
    asked = [r for r in upstream.main_requests() if "[[error:529]]" in str(r["body"])]
    assert len(asked) <= settings.CLAUDE_API_MAX_RETRIES + 1


def test_an_unreachable_upstream_fails_the_job_in_seconds(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    job, took = run("Anyone there?")
    assert job.status == JobStatus.FAILED and job.error_message
    assert took < 30, f"took {took:.1f} s"


def test_an_upstream_that_never_answers_is_given_up_on_after_the_timeout(monkeypatch, settings):
    settings.CLAUDE_API_TIMEOUT_MS = 2000
    settings.CLAUDE_API_MAX_RETRIES = 1
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold():  # accepts, reads, never answers
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        job, took = run("Hello?")
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
    assert job.status == JobStatus.FAILED and job.error_message
    # Two attempts of 2 s each, plus backoff and the CLI's start: far below the default 10-minute wait.
    assert took < 25, f"took {took:.1f} s"
