"""The runner with the real ``claude`` CLI against the fake Anthropic API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import cli_launcher, runner
from jobs.models import Job, JobStatus
from jobs.progress import JobProgress
from jobs.queue import job_claim_next
from jobs.services import job_cancel, job_create, job_delete
from jobs.workspace import job_paths

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def run(prompt: str, *, policy: str = "safe", **kwargs) -> Job:
    key, _ = api_key_create(name="runner", tool_policy=policy)
    job_create(caller=Caller(api_key=key), prompt=prompt, enqueue=False, **kwargs)
    job = job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def tool_results(job: Job) -> list[str]:
    results = []
    for event in job.events.filter(type="user"):
        for block in event.data["message"]["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append(str(block.get("content")))
    return results


def test_a_job_completes_with_its_result_usage_and_ordered_events(upstream):
    job = run("Say hello [[reply:Hello from Claude]]", model="haiku")
    assert job.status == JobStatus.COMPLETED, job.error_message
    assert job.result == "Hello from Claude"
    assert job.usage["output_tokens"] > 0
    assert job.cost_usd is not None and job.duration_ms > 0
    assert job.exit_code == 0
    assert job.claude_session_id
    types = list(job.events.order_by("seq").values_list("type", flat=True))
    assert types[0] == "system" and types[-1] == "result" and "assistant" in types
    assert list(job.events.values_list("seq", flat=True)) == list(range(len(types)))
    # The CLI asked the upstream for the model the job named.
    assert "haiku" in upstream.main_requests()[-1]["body"]["model"]


def test_a_job_run_again_numbers_its_events_on(owner_key):
    # A job a stopping worker put back had events already (its CLI's start): the next run's follow them.
    job = job_create(caller=Caller(api_key=owner_key.row), prompt="Again [[reply:twice]]", enqueue=False)
    JobProgress(job.pk, start_seq=0).emit("system", {"type": "system", "subtype": "init"})
    JobProgress(job.pk, start_seq=1).emit("system", {"type": "system", "subtype": "status"})
    claimed = runner.job_to_run(job_claim_next().pk)
    assert (claimed.last_event_seq, claimed.has_attachments) == (1, False)
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.result == "twice"
    seqs = list(job.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(len(seqs))) and len(seqs) > 3


def test_the_prompt_reaches_the_upstream_verbatim(upstream):
    prompt = "--model opus; $(whoami) `id` 'quoted' \"double\""
    job = run(prompt)
    assert job.status == JobStatus.COMPLETED
    assert job.result == f"Echo: {prompt}"


def test_an_upstream_error_fails_the_job_with_a_readable_message():
    job = run("Break please [[error:400]]")
    assert job.status == JobStatus.FAILED
    assert "fake upstream 400" in job.error_message
    assert job.finished_at is not None


def test_the_safe_policy_reads_only_inside_the_job_folder(tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("TOP-SECRET-OUTSIDE")
    job = run(f'Read it [[tool:Read {{"file_path": "{secret}"}}]]')
    assert job.status == JobStatus.COMPLETED
    assert all("TOP-SECRET-OUTSIDE" not in r for r in tool_results(job))
    assert any("denied" in r.lower() for r in tool_results(job))


def test_the_safe_policy_writes_only_to_the_output_folder(owner_key, settings):
    settings.JOB_KEEP_WORKDIR_SECONDS = 3600  # to look at the folder after the job
    job_id_holder = {}

    def prompt_for(path):
        return f'Write [[tool:Write {{"file_path": "{path}", "content": "data"}}]]'

    key = owner_key.row
    job = job_create(caller=Caller(api_key=key), prompt="placeholder", enqueue=False)
    paths = job_paths(job.pk)
    Job.objects.filter(pk=job.pk).update(prompt=prompt_for(paths.work / "escape.txt"))
    job_claim_next()
    runner.run_job(job.pk)
    assert not (paths.work / "escape.txt").exists()
    job_id_holder["denied"] = tool_results(Job.objects.get(pk=job.pk))
    assert any("denied" in r.lower() for r in job_id_holder["denied"])

    job2 = job_create(caller=Caller(api_key=key), prompt="placeholder", enqueue=False)
    paths2 = job_paths(job2.pk)
    Job.objects.filter(pk=job2.pk).update(prompt=prompt_for(paths2.output / "report.txt"))
    job_claim_next()
    runner.run_job(job2.pk)
    assert (paths2.output / "report.txt").read_text() == "data"


def test_the_safe_policy_has_no_shell():
    job = run('Run it [[tool:Bash {"command": "echo SHELL-RAN"}]]')
    assert all("SHELL-RAN" not in r for r in tool_results(job))


def test_the_read_only_policy_writes_nothing(make_key):
    key = make_key("ro", tool_policy="read_only").row
    job = job_create(caller=Caller(api_key=key), prompt="placeholder", enqueue=False)
    out = job_paths(job.pk).output / "x.txt"
    Job.objects.filter(pk=job.pk).update(prompt=f'[[tool:Write {{"file_path": "{out}", "content": "d"}}]]')
    job_claim_next()
    runner.run_job(job.pk)
    assert not out.exists()


def test_the_cli_sees_only_allow_listed_environment(settings, tmp_path, monkeypatch):
    """The launcher filters the environment; check it with ``env`` as the "CLI"."""
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/prod")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "very-secret")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:1")
    out = subprocess.run(
        [sys.executable, str(runner.LAUNCHER)],
        env={
            **os.environ,
            "CLAUDESVC_REAL_CLI": "/usr/bin/env",
            "CLAUDESVC_ENV_ALLOW": json.dumps([*settings.CLAUDE_ENV_ALLOW, "HOME"]),
            "CLAUDESVC_PIDFILE": str(tmp_path / "pid"),
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert "ANTHROPIC_BASE_URL" in names and "PATH" in names
    assert not names & {"DATABASE_URL", "DJANGO_SECRET_KEY", "CLAUDESVC_REAL_CLI", "CLAUDESVC_PIDFILE"}
    assert (tmp_path / "pid").read_text().isdigit()


def test_build_options_never_passes_the_prompt_as_an_argument(owner_key):
    job = job_create(
        caller=Caller(api_key=owner_key.row), prompt="--dangerously-skip-permissions", enqueue=False
    )
    options = runner.build_options(job, job_paths(job.pk), stderr_sink=print)
    assert options.permission_mode == "dontAsk"
    assert "Bash" not in options.tools
    assert options.cli_path == cli_launcher.executable(django_settings.VAR_DIR / "run")
    assert "--dangerously-skip-permissions" not in json.dumps(options.extra_args)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _start_slow_job(**kwargs) -> tuple[Job, threading.Thread]:
    key, _ = api_key_create(name="slow")
    job_create(
        caller=Caller(api_key=key),
        prompt="Count slowly [[slow:0.5]]" + " word" * 200,
        enqueue=False,
        **kwargs,
    )
    job = job_claim_next()

    def work():
        try:
            runner.run_job(job.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    assert _wait_for(lambda: Job.objects.get(pk=job.pk).cli_pid is not None)
    return job, thread


def test_a_job_past_its_timeout_is_stopped():
    job, thread = _start_slow_job(timeout_seconds=3)
    thread.join(30)
    job.refresh_from_db()
    assert job.status == JobStatus.TIMEOUT
    assert "timeout of 3 s" in job.error_message
    assert not _alive(job.cli_pid)


def test_cancelling_a_running_job_kills_its_cli():
    job, thread = _start_slow_job()
    job_cancel(job=Job.objects.get(pk=job.pk))
    thread.join(30)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert not _alive(job.cli_pid)


def test_deleting_a_running_job_kills_its_cli_and_files():
    job, thread = _start_slow_job()
    pid = Job.objects.get(pk=job.pk).cli_pid
    job_delete(job=Job.objects.get(pk=job.pk))
    thread.join(30)
    assert not thread.is_alive()
    assert not _alive(pid)
    assert not Job.objects.filter(pk=job.pk).exists()
    assert not job_paths(job.pk).root.exists()


def test_the_running_job_reports_memory_and_cpu_of_its_cli():
    job, thread = _start_slow_job(timeout_seconds=3)
    thread.join(30)
    job.refresh_from_db()
    assert job.peak_memory_bytes > 10_000_000
    assert job.cpu_time_ms > 0


# -- options of the Process API -------------------------------------------------------------------


def test_a_cli_that_ends_before_the_first_watch_round_is_measured_at_its_result(monkeypatch):
    class Unhurried(runner.JobWatch):  # its first round would come after the job's end
        def __init__(self, job_id, timeout_seconds, **kwargs):
            super().__init__(job_id, timeout_seconds, interval=60)

    monkeypatch.setattr(runner, "JobWatch", Unhurried)
    job = run("Quick [[reply:done]]")
    assert job.status == JobStatus.COMPLETED
    assert job.peak_memory_bytes > 10_000_000  # the CLI's tree, not its launcher's remains


def test_a_millisecond_timeout_is_honoured_to_the_sub_second(owner_key):
    from jobs.process_api.services import process_create

    process_create(
        caller=Caller(api_key=owner_key.row), prompt="Slow [[slow:0.5]]" + " word" * 100, timeout_ms=2500
    )
    job = job_claim_next()
    assert job.timeout_seconds == 3
    started = time.monotonic()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.TIMEOUT
    assert "timeout of 2.5 s" in job.error_message
    assert time.monotonic() - started < 2.5 + 10  # stopped, not run to the end


def test_a_working_directory_is_readable_and_stays_unwritten(owner_key, settings, tmp_path):
    from jobs.process_api.services import process_create, workdir_resolve

    allowed = tmp_path / "projects"
    project = allowed / "demo"
    (project / "out").mkdir(parents=True)
    (project / "notes.txt").write_text("NOTES-IN-THE-PROJECT")
    settings.PROCESS_ALLOWED_WORKDIRS = [allowed]
    settings.JOB_KEEP_WORKDIR_SECONDS = 3600  # to look at the job's folder after it
    caller = Caller(api_key=owner_key.row)

    def run_in_project(prompt: str) -> Job:
        process_create(caller=caller, prompt=prompt, working_directory=workdir_resolve(str(project)))
        job = job_claim_next()
        runner.run_job(job.pk)
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED, job.error_message
        return job

    read = run_in_project('[[tool:Read {"file_path": "notes.txt"}]]')
    assert any("NOTES-IN-THE-PROJECT" in r for r in tool_results(read))
    # "./out/**" of the safe policy does not open the operator's folder for writing …
    run_in_project(f'[[tool:Write {{"file_path": "{project / "out" / "x.txt"}", "content": "d"}}]]')
    assert not (project / "out" / "x.txt").exists()
    # … the job's own output folder stays writable.
    placeholder = job_create(caller=caller, prompt="placeholder", enqueue=False)
    Job.objects.filter(pk=placeholder.pk).delete()
    job = job_create(caller=caller, prompt="placeholder", enqueue=False, source="process")
    target = job_paths(job.pk).output / "report.txt"
    Job.objects.filter(pk=job.pk).update(
        prompt=f'[[tool:Write {{"file_path": "{target}", "content": "data"}}]]',
        options={"cwd": str(workdir_resolve(str(project)))},
    )
    job_claim_next()
    runner.run_job(job.pk)
    assert target.read_text() == "data"
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "out"]


def test_the_launcher_starts_through_a_copy_naming_this_interpreter(tmp_path):
    """No ``#!/usr/bin/env python3`` lookup (a pyenv shim costs up to half a second) and no site packages."""
    path = cli_launcher.executable(tmp_path)
    assert path.startswith(str(tmp_path)) and os.access(path, os.X_OK)
    first, rest = Path(path).read_text().split("\n", 1)
    assert first == f"#!{os.path.realpath(sys.executable)} -IS"
    assert rest == runner.LAUNCHER.read_text().split("\n", 1)[1]
    assert cli_launcher.executable(tmp_path) == path  # written once per process


def test_the_launcher_falls_back_to_its_own_file_where_a_copy_cannot_run(tmp_path):
    path = cli_launcher.executable(tmp_path, python="/nonexistent/" + "p" * 150)
    assert path == str(runner.LAUNCHER)


def test_a_session_turns_end_is_pushed_once_with_its_record_in_place(owner_key, monkeypatch):
    # The runner pushes a turn's end as it writes its final status: the session's record is in
    # that transaction, so a client that sends the next turn at once continues the conversation.
    from jobs import progress, tasks
    from jobs.models import ClaudeSession
    from jobs.sessions import session_for_call

    caller = Caller(api_key=owner_key.row)
    session = session_for_call(caller=caller, external_id="pushed", model="haiku")
    job_create(caller=caller, prompt="Hi [[reply:hello]]", model="haiku", session=session, enqueue=False)
    ended = []

    def seen(job: Job, held: ClaudeSession) -> tuple:
        return job.status, bool(job.claude_session_id) and held.claude_session_id == job.claude_session_id

    real_push, real_push_sync = progress._push, progress._push_sync

    async def push(job_id, message):
        if message["type"] == "job.ended":
            ended.append(
                seen(await Job.objects.aget(pk=job_id), await ClaudeSession.objects.aget(pk=session.pk))
            )
        await real_push(job_id, message)

    def push_sync(job_id, message):
        if message["type"] == "job.ended":
            ended.append(seen(Job.objects.get(pk=job_id), ClaudeSession.objects.get(pk=session.pk)))
        real_push_sync(job_id, message)

    real_after_run = tasks.session_job_finished_after_run

    def after_run(job):
        ended.append("after the run")
        real_after_run(job)

    monkeypatch.setattr(progress, "_push", push)
    monkeypatch.setattr(progress, "_push_sync", push_sync)
    monkeypatch.setattr(tasks, "session_job_finished_after_run", after_run)
    assert tasks.run_next_job()
    # Pushed by the runner, not after the run's own wind-down; and not again then.
    assert ended == [(JobStatus.COMPLETED, True), "after the run"]
