"""Sessions on the job core: one turn at a time, resuming the right conversation,
per-caller names, cleaning up idle ones."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from claudesvc.auth import Caller
from jobs import tasks
from jobs.models import ClaudeSession, Job, JobStatus
from jobs.queue import job_claim_next
from jobs.services import job_create, job_transition
from jobs.sessions import (
    session_clean_idle,
    session_for_call,
    session_job_finished,
    session_job_start,
    session_resume_id,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def caller(owner_key):
    return Caller(api_key=owner_key.row)


@pytest.fixture
def other(other_key):
    return Caller(api_key=other_key.row)


def turn(caller, session, prompt="hi", **kwargs) -> Job:
    return job_create(caller=caller, prompt=prompt, session=session, enqueue=False, **kwargs)


def complete(job: Job, claude_session_id: str) -> None:
    assert job_transition(
        job_id=job.pk, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED, claude_session_id=claude_session_id
    )


def test_a_sessions_turns_run_one_after_the_other(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    first, second = turn(caller, session, "one"), turn(caller, session, "two")
    assert job_claim_next().pk == first.pk
    # The second turn waits while the first runs …
    assert job_claim_next() is None
    complete(first, "c-1")
    # … and starts once it has finished.
    assert job_claim_next().pk == second.pk


def test_other_work_runs_beside_a_busy_session(caller, other):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    first, waiting = turn(caller, session), turn(caller, session)
    elsewhere = session_for_call(caller=other, external_id="conv", model="sonnet")
    other_turn = turn(other, elsewhere)
    plain = job_create(caller=caller, prompt="no session", enqueue=False)
    claimed = [job_claim_next().pk for _ in range(3)]
    assert claimed == [first.pk, other_turn.pk, plain.pk]
    assert job_claim_next() is None
    assert Job.objects.get(pk=waiting.pk).status == JobStatus.PENDING


def test_the_claim_itself_refuses_a_turn_beside_a_running_one(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    first, second = turn(caller, session), turn(caller, session)
    Job.objects.filter(pk=first.pk).update(status=JobStatus.RUNNING)
    # Even a worker that picked the second turn before the first started cannot start it.
    from jobs.queue import _claimable

    assert _claimable().filter(pk=second.pk).update(status=JobStatus.RUNNING) == 0


def test_the_same_name_is_a_different_session_for_another_caller(caller, other):
    mine = session_for_call(caller=caller, external_id="user-123", model="sonnet")
    again = session_for_call(caller=caller, external_id="user-123", model="haiku")
    theirs = session_for_call(caller=other, external_id="user-123", model="sonnet")
    assert mine.pk == again.pk and again.model == "haiku"
    assert theirs.pk != mine.pk and theirs.cwd != mine.cwd
    assert ClaudeSession.objects.count() == 2


def test_a_jwt_users_sessions_are_their_own(caller, django_user_model):
    user = django_user_model.objects.create_user("u1", password="pw-123456")
    by_user = session_for_call(caller=Caller(user_id=user.pk), external_id="x", model="sonnet")
    by_key = session_for_call(caller=caller, external_id="x", model="sonnet")
    assert by_user.pk != by_key.pk and by_user.user_id == user.pk and by_user.api_key is None


def test_without_a_name_every_call_is_a_new_session(caller):
    a = session_for_call(caller=caller, external_id=None, model="sonnet")
    b = session_for_call(caller=caller, external_id=None, model="sonnet")
    assert a.pk != b.pk and a.external_id.startswith("sess_")


def test_a_turn_resumes_the_latest_completed_conversation_in_the_sessions_folder(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    first = turn(caller, session, "full prompt with history", options={"resume_prompt": "only the new turn"})
    claimed = job_claim_next()
    session_job_start(claimed)
    claimed.refresh_from_db()
    assert "resume" not in claimed.options and claimed.prompt == "full prompt with history"
    assert claimed.options["cwd"] == session.cwd and (Path(session.cwd) / "out").is_dir()
    complete(first, "c-1")
    failed = turn(caller, session)
    job_transition(
        job_id=job_claim_next().pk, frm=JobStatus.RUNNING, to=JobStatus.FAILED, claude_session_id="c-bad"
    )
    second = turn(caller, session, "full", options={"resume_prompt": "new turn"})
    claimed = job_claim_next()
    assert claimed.pk == second.pk
    session_job_start(claimed)
    claimed.refresh_from_db()
    # The failed turn is skipped; only the new turn is sent.
    assert claimed.options["resume"] == "c-1" and claimed.prompt == "new turn"
    assert failed.pk != second.pk


def test_resume_reads_the_newest_completed_turn(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    for name in ["c-1", "c-2"]:
        turn(caller, session)
        complete(job_claim_next(), name)
    assert session_resume_id(session.pk) == "c-2"


def test_inline_files_are_written_into_the_working_directory_and_dropped_from_the_options(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    entry = {
        "name": "attachments/ab/01-notes.txt",
        "media_type": "text/plain",
        "data": base64.b64encode(b"hi").decode(),
    }
    turn(caller, session, options={"inline_files": [entry]})
    claimed = job_claim_next()
    session_job_start(claimed)
    assert (Path(session.cwd) / "attachments/ab/01-notes.txt").read_bytes() == b"hi"
    claimed.refresh_from_db()
    assert claimed.options["inline_files"] == [
        {"name": "attachments/ab/01-notes.txt", "media_type": "text/plain"}
    ]


def test_an_inline_file_cannot_escape_the_working_directory(caller):
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    entry = {"name": "../../evil.txt", "media_type": "text/plain", "data": "aGk="}
    turn(caller, session, options={"inline_files": [entry]})
    with pytest.raises(ValueError):
        session_job_start(job_claim_next())


def test_a_finished_turn_is_remembered_and_wakes_the_next(
    caller, monkeypatch, django_capture_on_commit_callbacks
):
    woken = []
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: woken.append(1))
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    first = turn(caller, session)
    turn(caller, session)
    job_claim_next()
    complete(first, "c-9")
    with django_capture_on_commit_callbacks(execute=True):
        session_job_finished(first)
    session.refresh_from_db()
    assert session.claude_session_id == "c-9" and woken == [1]


def test_the_task_prepares_runs_and_hands_on(caller, monkeypatch):
    ran = []

    def fake_run(job_id):
        job = Job.objects.get(pk=job_id)
        ran.append((job.options.get("resume"), job.options["cwd"]))
        job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED, claude_session_id="c-1")

    monkeypatch.setattr("jobs.runner.run_job", fake_run)
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    turn(caller, session)
    turn(caller, session)
    tasks.run_next_job()
    tasks.run_next_job()
    assert ran == [(None, session.cwd), ("c-1", session.cwd)]


def test_a_session_that_cannot_be_prepared_fails_its_turn(caller, monkeypatch):
    monkeypatch.setattr(
        "jobs.tasks.session_job_start", lambda job: (_ for _ in ()).throw(OSError("disk full"))
    )
    monkeypatch.setattr("jobs.runner.run_job", lambda job_id: pytest.fail("must not run"))
    session = session_for_call(caller=caller, external_id="conv", model="sonnet")
    job = turn(caller, session)
    tasks.run_next_job()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "disk full" in job.error_message


def test_idle_sessions_are_cleaned_up_but_not_busy_ones(caller, settings):
    settings.COMPAT_SESSION_IDLE_MINUTES = 30
    old = timezone.now() - timedelta(minutes=31)
    idle = session_for_call(caller=caller, external_id="idle", model="sonnet")
    busy = session_for_call(caller=caller, external_id="busy", model="sonnet")
    fresh = session_for_call(caller=caller, external_id="fresh", model="sonnet")
    ClaudeSession.objects.filter(pk__in=[idle.pk, busy.pk]).update(last_activity=old)
    Path(idle.cwd).mkdir(parents=True)
    finished = turn(caller, idle)
    complete(job_claim_next(), "c-1")
    turn(caller, busy)
    assert session_clean_idle() == 1
    assert set(ClaudeSession.objects.values_list("external_id", flat=True)) == {"busy", "fresh"}
    assert not Path(idle.cwd).exists()
    # The turns stay, with their results; they are no longer linked.
    assert Job.objects.get(pk=finished.pk).session_id is None
    assert fresh.pk


def test_the_cleanup_is_scheduled():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="jobs.tasks.clean_idle_sessions")
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1


@pytest.mark.parametrize(
    "name", ["user-123-1734185905", "conversation-xyz", "alice@example.com", "a:b.c_d+e"]
)
def test_session_names_callers_use_are_accepted(name):
    from jobs.sessions import session_check_id

    assert session_check_id(name, field="X-Request-ID") == name


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "a/b", "ü", 12, None])
def test_unsafe_session_names_are_refused(name):
    from claudesvc.errors import ServiceError
    from jobs.sessions import session_check_id

    with pytest.raises(ServiceError) as refused:
        session_check_id(name, field="metadata.user_id")
    assert refused.value.field == "metadata.user_id"
