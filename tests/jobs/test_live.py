"""Live sessions without the CLI: history fingerprints and routing (jobs/live.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from claudesvc.auth import Caller
from jobs import live
from jobs.compat_api.conversation import anthropic_conversation, openai_conversation
from jobs.compat_api.fingerprint import answer_fingerprints, conversation_fingerprints
from jobs.models import ClaudeSession, Job, JobStatus, Worker
from jobs.queue import job_claim_next, job_claimable_exists
from jobs.services import job_create
from jobs.sessions import session_for_call, session_job_start


def _openai(*messages):
    return openai_conversation([{"role": r, "content": c} for r, c in messages])


def test_a_faithful_client_continues_the_fingerprint_chain():
    first = _openai(("system", "Be brief."), ("user", "Hi  there"))
    fps = answer_fingerprints(conversation_fingerprints(first)["turn_fp"], ["Hello!\n"])
    # OpenAI shape: the answer sent back as a string, whitespace trimmed differently.
    second = _openai(
        ("system", "Be brief."), ("user", "Hi there"), ("assistant", " Hello! "), ("user", "Next")
    )
    assert conversation_fingerprints(second)["history_fp"] in fps
    # OpenAI content parts and Anthropic blocks give the same fingerprint.
    parts = openai_conversation(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Next"},
        ]
    )
    blocks = anthropic_conversation(
        [
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
            {"role": "user", "content": "Next"},
        ],
        system=[{"type": "text", "text": "Be brief."}],
    )
    assert conversation_fingerprints(parts)["history_fp"] in fps
    assert conversation_fingerprints(blocks)["history_fp"] in fps


@pytest.mark.parametrize(
    "history",
    [
        [("user", "Hi there, edited"), ("assistant", "Hello!")],  # an edited message
        [("user", "Hi there"), ("assistant", "Something else")],  # an edited answer
        [("assistant", "Hello!")],  # a dropped message
        [("user", "Hi there"), ("assistant", "Hello!"), ("user", "Hi there"), ("assistant", "Hello!")],
    ],
)
def test_a_changed_history_does_not_match(history):
    first = _openai(("user", "Hi there"))
    fps = answer_fingerprints(conversation_fingerprints(first)["turn_fp"], ["Hello!"])
    changed = _openai(*history, ("user", "Next"))
    assert conversation_fingerprints(changed)["history_fp"] not in fps


def test_a_new_turn_without_history_records_no_history_fingerprint():
    assert "history_fp" not in conversation_fingerprints(_openai(("user", "Hi")))


# -- the worker's side -------------------------------------------------------------------------


@pytest.fixture
def caller(owner_key, settings):
    settings.SESSION_KEEPALIVE_SECONDS = 300
    return Caller(api_key=owner_key.row)


def _turn(caller, session, **options) -> Job:
    return job_create(
        caller=caller,
        prompt="FULL PROMPT",
        session=session,
        enqueue=False,
        options={"resume_prompt": "NEW", **options},
    )


def _complete(job: Job, claude_id: str) -> None:
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, claude_session_id=claude_id, finished_at=timezone.now()
    )


def test_a_stale_history_starts_afresh_with_the_full_prompt(caller):
    session = session_for_call(caller=caller, external_id="s1", model="haiku")
    done = _turn(caller, session)
    _complete(done, "11111111-1111-1111-1111-111111111111")
    ClaudeSession.objects.filter(pk=session.pk).update(history_fps=["known"])
    session.refresh_from_db()
    faithful = _turn(caller, session, history_fp="known")
    session_job_start(faithful)
    assert faithful.options["resume"] and faithful.options["resume_job"] == str(done.pk)
    assert faithful.prompt == "NEW"
    _complete(faithful, "11111111-1111-1111-1111-111111111111")
    stale = _turn(caller, session, history_fp="edited")
    session_job_start(stale)
    assert "resume" not in stale.options and "resume_job" not in stale.options
    assert stale.options["history_stale"] and stale.prompt == "FULL PROMPT"


def test_a_held_sessions_turn_is_left_to_its_live_worker(caller):
    now = timezone.now()
    for name in ("host:1", "host:2"):
        Worker.objects.create(name=name, host="host", pid=1, cluster="c", started_at=now, heartbeat_at=now)
    session = session_for_call(caller=caller, external_id="held", model="haiku")
    ClaudeSession.objects.filter(pk=session.pk).update(
        live_worker="host:1", live_until=now + timedelta(seconds=60)
    )
    turn = _turn(caller, session)
    assert not job_claimable_exists(), "an idle worker's sweep does not wake up for it"
    assert job_claim_next(worker="host:2") is None
    # Its holder claims it, through the normal claim (restricted to its sessions).
    assert job_claim_next(worker="host:1", only_sessions=[session.pk]).pk == turn.pk


def test_a_dead_or_expired_holder_does_not_hold_the_turn(caller):
    now = timezone.now()
    Worker.objects.create(
        name="host:1",
        host="host",
        pid=1,
        cluster="c",
        started_at=now,
        heartbeat_at=now - timedelta(minutes=5),
    )
    session = session_for_call(caller=caller, external_id="orphan", model="haiku")
    ClaudeSession.objects.filter(pk=session.pk).update(
        live_worker="host:1", live_until=now + timedelta(seconds=60)
    )
    turn = _turn(caller, session)
    assert job_claim_next(worker="host:2").pk == turn.pk


def test_keepalive_zero_routes_nothing(caller, settings):
    settings.SESSION_KEEPALIVE_SECONDS = 0
    now = timezone.now()
    Worker.objects.create(name="host:1", host="host", pid=1, cluster="c", started_at=now, heartbeat_at=now)
    session = session_for_call(caller=caller, external_id="off", model="haiku")
    ClaudeSession.objects.filter(pk=session.pk).update(
        live_worker="host:1", live_until=now + timedelta(seconds=60)
    )
    turn = _turn(caller, session, live_session=True)
    assert not live.serves(turn)
    assert job_claim_next(worker="host:2").pk == turn.pk


def test_the_holders_claim_still_counts_all_of_the_keys_running_jobs(caller, owner_key):
    owner_key.row.max_running_jobs = 1
    owner_key.row.save()
    caller = Caller(api_key=owner_key.row)
    other = session_for_call(caller=caller, external_id="other", model="haiku")
    held = session_for_call(caller=caller, external_id="held", model="haiku")
    _turn(caller, other)
    assert job_claim_next(worker="host:2").session_id == other.pk  # the key's one running job
    _turn(caller, held)
    assert job_claim_next(worker="host:1", only_sessions=[held.pk]) is None


def test_only_sessions_the_caller_named_get_a_live_cli(caller):
    session = session_for_call(caller=caller, external_id=None, model="haiku")
    assert not live.serves(_turn(caller, session))
    assert live.serves(_turn(caller, session, live_session=True, cwd="/tmp/x"))
