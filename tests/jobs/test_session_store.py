"""The database SessionStore: the SDK's own conformance suite, owners that see
only their own lines, a resume that skips turns that did not complete, lines
jsonb cannot hold, and deletion with the owner."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from claude_agent_sdk import project_key_for_directory
from claude_agent_sdk.testing import run_session_store_conformance
from django.db import connections
from django.utils import timezone

from claudesvc.auth import Caller
from jobs import tasks
from jobs.models import ClaudeSession, Job, JobStatus, TranscriptEntry
from jobs.reaper import job_reap_stale, job_release_broken_off
from jobs.services import job_create, job_delete
from jobs.session_store import WORKDIR_PROJECT, DatabaseSessionStore
from jobs.sessions import session_delete, session_for_call, session_job_start, session_store_options

# The store's ORM calls run on sync_to_async's thread: the test's rows must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_store_connections():
    yield
    # The store's connection lives on sync_to_async's thread; let the test database go.
    await sync_to_async(connections.close_all)()


KEY = {"project_key": "proj", "session_id": "7f0c2d8e-0000-4000-8000-000000000001"}


@pytest.fixture
def caller(owner_key):
    return Caller(api_key=owner_key.row)


def new_session(caller: Caller, name: str | None = None) -> ClaudeSession:
    return session_for_call(caller=caller, external_id=name, model="sonnet")


def new_job(caller: Caller, **kwargs) -> Job:
    return job_create(caller=caller, prompt="hi", enqueue=False, **kwargs)


def line(n: int, **extra) -> dict:
    return {"type": "user", "uuid": f"u-{n}", "n": n, **extra}


async def test_it_passes_the_sdks_conformance_suite_owned_by_sessions(caller):
    async def make_store() -> DatabaseSessionStore:
        # A fresh owner per contract: the suite expects each store to start empty.
        session = await sync_to_async(new_session)(caller)
        return DatabaseSessionStore(session_id=session.pk)

    await run_session_store_conformance(make_store)


async def test_it_passes_the_sdks_conformance_suite_owned_by_jobs(caller):
    async def make_store() -> DatabaseSessionStore:
        job = await sync_to_async(new_job)(caller)
        return DatabaseSessionStore(job_id=job.pk, writer_id=job.pk)

    await run_session_store_conformance(make_store)


async def test_it_ignores_a_line_it_already_has(caller):
    session = await sync_to_async(new_session)(caller)
    store = DatabaseSessionStore(session_id=session.pk)
    await store.append(KEY, [line(1), line(2)])
    # A retried batch, and one that repeats a line within itself.
    await store.append(KEY, [line(1), line(2), line(3), line(3)])
    # Lines without a uuid (titles, tags) are never deduplicated.
    await store.append(KEY, [{"type": "custom-title", "title": "t"}, {"type": "custom-title", "title": "t"}])
    assert await store.load(KEY) == [
        line(1),
        line(2),
        line(3),
        {"type": "custom-title", "title": "t"},
        {"type": "custom-title", "title": "t"},
    ]


async def test_owners_never_see_each_others_lines(caller, other_key):
    mine = await sync_to_async(new_session)(caller, "same-name")
    theirs = await sync_to_async(new_session)(Caller(api_key=other_key.row), "same-name")
    await DatabaseSessionStore(session_id=mine.pk).append(KEY, [line(1, text="secret")])
    # Same project, same conversation id, same line uuid: still two conversations.
    other_store = DatabaseSessionStore(session_id=theirs.pk)
    assert await other_store.load(KEY) is None
    assert await other_store.list_sessions("proj") == []
    await other_store.append(KEY, [line(1, text="theirs")])
    assert await DatabaseSessionStore(session_id=mine.pk).load(KEY) == [line(1, text="secret")]


async def test_a_resume_skips_lines_of_turns_that_did_not_complete(caller):
    session = await sync_to_async(new_session)(caller)
    first, second, third = [await sync_to_async(new_job)(caller, session=session) for _ in range(3)]
    await Job.objects.filter(pk=first.pk).aupdate(status=JobStatus.COMPLETED)
    await DatabaseSessionStore(session_id=session.pk, writer_id=first.pk).append(KEY, [line(1), line(2)])
    # The second turn's host died half-way (the reaper marks it failed).
    await DatabaseSessionStore(session_id=session.pk, writer_id=second.pk).append(KEY, [line(3)])
    await Job.objects.filter(pk=second.pk).aupdate(status=JobStatus.FAILED)

    store = DatabaseSessionStore(session_id=session.pk, writer_id=third.pk)
    assert await store.load(KEY) == [line(1), line(2)]
    # The running turn sees what it wrote itself.
    await store.append(KEY, [line(4)])
    assert await store.load(KEY) == [line(1), line(2), line(4)]


def _lost_turn(caller):
    """A session with a completed turn and a running one (the lost one), each with a line."""
    session = new_session(caller, "conv")
    done, lost = [new_job(caller, session=session) for _ in range(2)]
    Job.objects.filter(pk=done.pk).update(status=JobStatus.COMPLETED, claude_session_id=KEY["session_id"])

    async def fill():
        await DatabaseSessionStore(session_id=session.pk, writer_id=done.pk).append(KEY, [line(1)])
        await DatabaseSessionStore(session_id=session.pk, writer_id=lost.pk).append(KEY, [line(2)])

    asyncio.run(fill())
    Job.objects.filter(pk=lost.pk).update(
        status=JobStatus.RUNNING, worker="gone-host:1", heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    return session, done, lost


def _resumes_only_the_completed_turn(caller, session, done):
    assert list(TranscriptEntry.objects.values_list("uuid", flat=True)) == ["u-1"]
    following = new_job(caller, session=session)
    Job.objects.filter(pk=following.pk).update(status=JobStatus.RUNNING)
    following.refresh_from_db()
    session_job_start(following)
    assert following.options["resume"] == KEY["session_id"]
    # Deleting the completed turn's job later keeps its lines in the conversation.
    job_delete(job=done)
    assert asyncio.run(DatabaseSessionStore(session_id=session.pk).load(KEY)) == [line(1)]


def test_lines_of_a_turn_whose_host_died_are_dropped_by_the_reaper(caller):
    session, done, lost = _lost_turn(caller)
    # Its worker is gone and never runs session_job_finished: the reaper fails the turn.
    assert job_reap_stale() == 1
    assert Job.objects.get(pk=lost.pk).status == JobStatus.FAILED
    _resumes_only_the_completed_turn(caller, session, done)


def test_lines_of_a_turn_whose_run_broke_off_are_dropped_when_it_is_settled(caller):
    session, done, lost = _lost_turn(caller)
    # Its worker's run raised (the database went away after the CLI started): tasks._release.
    assert job_release_broken_off(job_id=lost.pk, error=RuntimeError("boom"), cli_started=True) == "failed"
    _resumes_only_the_completed_turn(caller, session, done)


async def test_the_working_directory_is_one_project_on_every_host(caller, tmp_path):
    session = await sync_to_async(new_session)(caller)
    host_a, host_b = tmp_path / "a" / "sessions" / "s", tmp_path / "b" / "sessions" / "s"
    host_a.mkdir(parents=True)
    host_b.mkdir(parents=True)
    key_a = {**KEY, "project_key": project_key_for_directory(host_a)}
    key_b = {**KEY, "project_key": project_key_for_directory(host_b)}
    assert key_a != key_b
    await DatabaseSessionStore(session_id=session.pk, workdir=host_a).append(key_a, [line(1)])
    store_b = DatabaseSessionStore(session_id=session.pk, workdir=host_b)
    assert await store_b.load(key_b) == [line(1)]
    assert [s["session_id"] for s in await store_b.list_sessions(key_b["project_key"])] == [KEY["session_id"]]
    assert await TranscriptEntry.objects.filter(project_key=WORKDIR_PROJECT).acount() == 1


async def test_it_keeps_lines_jsonb_cannot_hold(caller):
    job = await sync_to_async(new_job)(caller)
    store = DatabaseSessionStore(job_id=job.pk)
    odd = [
        line(1, output="binary\x00file"),
        line(2, output="lone \ud800 surrogate"),
        line(3, __claudesvc_json__="looks like the wrapper"),
        line(4, output="ünïcödé 😀 and a \\u0000 that is only text"),
    ]
    await store.append(KEY, odd)
    assert await store.load(KEY) == odd


async def test_it_refuses_keys_and_lines_it_cannot_store(caller):
    job = await sync_to_async(new_job)(caller)
    store = DatabaseSessionStore(job_id=job.pk)
    with pytest.raises(ValueError, match="session_id must be a string of at most 128"):
        await store.append({**KEY, "session_id": "x" * 129}, [line(1)])
    with pytest.raises(ValueError, match="uuid is longer than 64"):
        await store.append(KEY, [{"type": "user", "uuid": "u" * 65}])
    with pytest.raises(ValueError, match="must be a JSON object"):
        await store.append(KEY, ["not an object"])
    assert await store.load(KEY) is None
    with pytest.raises(ValueError, match="exactly one"):
        DatabaseSessionStore(session_id=uuid.uuid4(), job_id=uuid.uuid4())


def test_lines_go_with_their_session_or_job(caller):
    session = new_session(caller, "conv")
    job = new_job(caller)

    async def fill():
        await DatabaseSessionStore(session_id=session.pk).append(KEY, [line(1)])
        await DatabaseSessionStore(job_id=job.pk).append(KEY, [line(1)])

    asyncio.run(fill())
    assert TranscriptEntry.objects.count() == 2
    session_delete(session=session)
    assert list(TranscriptEntry.objects.values_list("job_id", flat=True)) == [job.pk]
    job_delete(job=job)
    assert not TranscriptEntry.objects.exists()


def test_the_runner_options_name_the_store_and_the_cli_config_folder(caller, settings):
    from jobs.runner import build_options
    from jobs.workspace import workspace_prepare

    session = new_session(caller, "conv")
    turn = new_job(caller, session=session)
    plain = build_options(turn, workspace_prepare(turn.pk), stderr_sink=print)
    options = session_store_options(turn, plain)
    assert repr(options.session_store) == f"<DatabaseSessionStore session_id={session.pk}>"
    assert options.session_store_flush == "batched"
    # The SDK finds the transcripts it mirrors in the session's own CLI config folder
    # (not the service's CLAUDE_HOME), and the CLI may see the variable.
    assert options.env["CLAUDE_CONFIG_DIR"] == plain.env["CLAUDE_CONFIG_DIR"]
    assert str(session.pk) in options.env["CLAUDE_CONFIG_DIR"]
    assert not options.env["CLAUDE_CONFIG_DIR"].startswith(str(settings.CLAUDE_HOME))
    assert "CLAUDE_CONFIG_DIR" in json.loads(options.env["CLAUDESVC_ENV_ALLOW"])

    # A CLI config folder of the job's own is kept; a job without a session owns its lines.
    alone = new_job(caller)
    own = dataclasses.replace(plain, env={**plain.env, "CLAUDE_CONFIG_DIR": "/jobs/x/cli-home"})
    options = session_store_options(alone, own)
    assert options.env["CLAUDE_CONFIG_DIR"] == "/jobs/x/cli-home"
    assert repr(options.session_store) == f"<DatabaseSessionStore job_id={alone.pk}>"


# -- resumes through the store, with the real CLI --------------------------------------------


def said(upstream) -> str:
    """Everything the conversation's last request to the upstream carried, as text."""
    return json.dumps(upstream.main_requests()[-1]["body"]["messages"])


def run_turn(caller: Caller, session: ClaudeSession, prompt: str) -> Job:
    job = job_create(caller=caller, prompt=prompt, session=session, enqueue=False)
    assert tasks.run_next_job() == str(job.pk)
    job.refresh_from_db()
    return job


def move_host(settings, tmp_path, name: str) -> None:
    """What another worker host looks like: its own JOBS_ROOT and CLI home, nothing shared."""
    settings.JOBS_ROOT = tmp_path / name / "jobs"
    settings.CLAUDE_HOME = tmp_path / name / "claude-home"


@pytest.mark.usefixtures("upstream")
def test_a_session_resumes_from_the_database_when_the_cli_files_are_gone(caller, upstream, settings):
    session = new_session(caller, "conv")
    first = run_turn(caller, session, "My name is Ada [[reply:Noted]]")
    assert first.status == JobStatus.COMPLETED, first.error_message
    assert TranscriptEntry.objects.filter(session=session, writer=first).exists()
    assert not TranscriptEntry.objects.filter(job__isnull=False).exists()

    # The CLI's own transcript (in the session's CLI home) and the session's folder
    # vanish (a cleaned cache, a new disk).
    sessions_root = Path(settings.JOBS_ROOT) / "sessions"
    assert list(sessions_root.glob("**/projects/**/*.jsonl"))
    shutil.rmtree(sessions_root)

    second = run_turn(caller, session, "What is my name?")
    assert second.status == JobStatus.COMPLETED, second.error_message
    assert "My name is Ada" in said(upstream) and "Noted" in said(upstream)
    # Each turn stored only its own lines: the conversation is in the database once.
    users = TranscriptEntry.objects.filter(session=session, data__type="user")
    assert [w for w in users.values_list("writer_id", flat=True)] == [first.pk, second.pk]


@pytest.mark.usefixtures("upstream")
def test_turns_on_other_hosts_keep_the_context_and_a_failed_turn_leaves_nothing(
    caller, upstream, settings, tmp_path
):
    session = new_session(caller, "conv")
    move_host(settings, tmp_path, "host-a")
    assert run_turn(caller, session, "Remember the word PELICAN [[reply:OK]]").status == JobStatus.COMPLETED

    move_host(settings, tmp_path, "host-b")
    failed = run_turn(caller, session, "Forget it, say BANANA [[error:400]]")
    assert failed.status == JobStatus.FAILED
    # Whatever it wrote to the store is dropped when it ends.
    assert not TranscriptEntry.objects.filter(writer=failed).exists()

    move_host(settings, tmp_path, "host-c")
    third = run_turn(caller, session, "Which word?")
    assert third.status == JobStatus.COMPLETED, third.error_message
    assert "PELICAN" in said(upstream)
    # The failed turn is not part of the conversation the next turn resumed.
    assert "BANANA" not in said(upstream)


@pytest.mark.usefixtures("upstream")
def test_a_job_without_a_session_keeps_its_transcript_until_it_is_deleted(caller):
    job = new_job(caller)
    assert tasks.run_next_job() == str(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED, job.error_message
    lines = TranscriptEntry.objects.filter(job=job)
    assert lines.filter(session_key=job.claude_session_id, project_key=WORKDIR_PROJECT).exists()
    job_delete(job=job)
    assert not lines.exists()
