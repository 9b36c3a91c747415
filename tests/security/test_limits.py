"""A CLI that passes one of its limits ends ``failed`` with a message naming the limit and its setting."""

from __future__ import annotations

import time

import pytest

from jobs.models import JobStatus
from jobs.runner import rlimit_hit
from tests.security.conftest import bash, run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def test_a_cli_that_cannot_get_its_memory_fails_naming_the_memory_limit(settings):
    # Bun needs more than this to start: every allocation past RLIMIT_DATA fails.
    settings.CLAUDE_MEMORY_LIMIT_MB = 64
    job = run_job("hello [[reply:hi]]")
    assert job.status == JobStatus.FAILED
    assert "memory limit of 64 MB" in job.error_message
    assert "CLAUDE_MEMORY_LIMIT_MB" in job.error_message


@pytest.mark.usefixtures("bwrap_on")
def test_a_process_tree_past_the_memory_limit_is_stopped(settings):
    settings.CLAUDE_MEMORY_LIMIT_MB = 1024
    # Each process stays under RLIMIT_DATA; together with the CLI they do not.
    hog = "python3 -c \"import time; x = b'a' * (900 << 20); time.sleep(60)\""
    started = time.monotonic()
    job = run_job(f"eat {bash(hog)}", policy="trusted")
    assert job.status == JobStatus.FAILED
    assert "memory limit of 1024 MB" in job.error_message, job.error_message
    assert time.monotonic() - started < 50


@pytest.mark.usefixtures("bwrap_on")
def test_too_many_processes_stop_the_job(settings):
    settings.CLAUDE_PROCESS_LIMIT = 8
    fork = "for i in $(seq 30); do sleep 40 & done; wait"
    started = time.monotonic()
    job = run_job(f"fork {bash(fork)}", policy="trusted")
    assert job.status == JobStatus.FAILED
    assert "process limit of 8 processes" in job.error_message, job.error_message
    assert "CLAUDE_PROCESS_LIMIT" in job.error_message
    assert time.monotonic() - started < 35


@pytest.mark.usefixtures("bwrap_on")
def test_cpu_time_past_the_limit_stops_the_job(settings):
    settings.CLAUDE_CPU_LIMIT_SECONDS = 10
    spin = "python3 -c 'while True: pass'"
    started = time.monotonic()
    job = run_job(f"spin {bash(spin)}", policy="trusted")
    assert job.status == JobStatus.FAILED
    assert "CPU time limit of 10 s" in job.error_message, job.error_message
    assert "CLAUDE_CPU_LIMIT_SECONDS" in job.error_message
    assert time.monotonic() - started < 90


@pytest.mark.parametrize(
    ("exit_code", "stderr", "cpu_ms", "named"),
    [
        (134, "panic(main thread): abort() called\noh no: Bun has crashed.", 0, "memory limit"),
        (-6, "", 0, "memory limit"),
        (152, "", 0, "CPU time limit"),
        (-9, "", 10_000_000, "CPU time limit"),
        (1, "Error: EMFILE: too many open files", 0, "open files limit"),
        (1, "some other failure", 0, None),
    ],
)
def test_how_a_cli_ended_tells_which_rlimit_it_hit(settings, exit_code, stderr, cpu_ms, named):
    message = rlimit_hit(exit_code, stderr, cpu_ms=cpu_ms)
    if named is None:
        assert message == ""
    else:
        assert named in message
