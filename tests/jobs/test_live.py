"""Live sessions without the CLI: history fingerprints and routing (jobs/live.py)."""

from __future__ import annotations

import queue
import re
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apikeys.models import ApiKey
from claudesvc.auth import Caller
from jobs import live, live_cli, live_routing, wakeup
from jobs.compat_api.conversation import anthropic_conversation, openai_conversation
from jobs.compat_api.fingerprint import answer_fingerprints, conversation_fingerprints
from jobs.compat_api.services import compat_turn_create
from jobs.models import ClaudeSession, Job, JobStatus, Worker
from jobs.queue import job_claim_next, job_claim_session_turn, job_claimable_exists
from jobs.services import job_create, job_transition
from jobs.sessions import session_for_call, session_job_finished, session_job_start


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


def _complete_running(job: Job, claude_id: str, *, then) -> bool:
    """The runner's end of a running turn: its final status, with ``then`` in that transaction."""
    return job_transition(
        job_id=job.pk,
        frm=JobStatus.RUNNING,
        to=JobStatus.COMPLETED,
        then=then,
        claude_session_id=claude_id,
        result="ok",
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


def test_a_turn_is_recorded_on_its_session_with_its_final_status(caller):
    # A client that sees the turn end may send the next turn at once: the session must hold the
    # conversation the turn left by then, not only after the run (tasks._run's fallback).
    session = session_for_call(caller=caller, external_id="recorded", model="haiku")
    turn = _turn(caller, session, turn_fp="t1")
    Job.objects.filter(pk=turn.pk).update(status=JobStatus.RUNNING)
    seen = {}

    def record() -> None:
        session_job_finished(turn)
        seen["in_transaction"] = connection.in_atomic_block

    claude_id = "22222222-2222-2222-2222-222222222222"
    assert _complete_running(turn, claude_id, then=record)
    assert seen["in_transaction"]
    session.refresh_from_db()
    assert session.claude_session_id == claude_id and session.history_fps


def test_a_failing_record_leaves_the_final_status_standing(caller):
    session = session_for_call(caller=caller, external_id="unrecorded", model="haiku")
    turn = _turn(caller, session)
    Job.objects.filter(pk=turn.pk).update(status=JobStatus.RUNNING)

    def broken() -> None:
        ClaudeSession.objects.filter(pk=session.pk).update(claude_session_id="written, then undone")
        raise RuntimeError("the record failed")

    assert job_transition(job_id=turn.pk, frm=JobStatus.RUNNING, to=JobStatus.FAILED, then=broken)
    assert Job.objects.get(pk=turn.pk).status == JobStatus.FAILED
    session.refresh_from_db()
    assert session.claude_session_id != "written, then undone"


def test_a_record_goes_only_with_a_final_status(caller):
    # Not silently dropped: a move to a status that is not final has no transaction to join.
    turn = _turn(caller, session_for_call(caller=caller, external_id="not-final", model="haiku"))
    with pytest.raises(ValueError, match="final status"):
        job_transition(job_id=turn.pk, frm=JobStatus.PENDING, to=JobStatus.RUNNING, then=lambda: None)
    assert Job.objects.get(pk=turn.pk).status == JobStatus.PENDING


def test_a_late_record_of_a_turn_leaves_the_next_turns_conversation(caller):
    session = session_for_call(caller=caller, external_id="late", model="haiku")
    first = _turn(caller, session, turn_fp="t1")
    _complete(first, "11111111-1111-1111-1111-111111111111")
    second = _turn(caller, session, turn_fp="t2")
    Job.objects.filter(pk=second.pk).update(started_at=timezone.now())
    _complete(second, "33333333-3333-3333-3333-333333333333")
    session_job_finished(second)
    session.refresh_from_db()
    left = (session.claude_session_id, list(session.history_fps))
    assert left[0].startswith("3333") and left[1]
    session_job_finished(first)  # the first turn's fallback, after the second turn ran
    session.refresh_from_db()
    assert (session.claude_session_id, list(session.history_fps)) == left


def test_a_later_turn_cancelled_while_waiting_does_not_stop_the_record(caller):
    # The client sent a next turn and cancelled it while this one ran: it never started.
    session = session_for_call(caller=caller, external_id="waiting", model="haiku")
    turn = _turn(caller, session, turn_fp="t1")
    Job.objects.filter(pk=turn.pk).update(status=JobStatus.RUNNING)
    later = _turn(caller, session, turn_fp="t2")
    assert job_transition(job_id=later.pk, frm=JobStatus.PENDING, to=JobStatus.CANCELLED)
    claude_id = "44444444-4444-4444-4444-444444444444"
    assert _complete_running(turn, claude_id, then=partial(session_job_finished, turn))
    session.refresh_from_db()
    assert session.claude_session_id == claude_id and session.history_fps


def test_a_turn_recorded_with_its_final_status_is_not_recorded_again_after_its_run(
    caller, monkeypatch, django_capture_on_commit_callbacks
):
    from jobs import sessions

    session = session_for_call(caller=caller, external_id="once", model="haiku")
    recorded, broken, unfinished = (_turn(caller, session, turn_fp=f"t{i}") for i in range(3))
    Job.objects.filter(pk__in=[recorded.pk, broken.pk]).update(status=JobStatus.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert job_transition(
            job_id=recorded.pk,
            frm=JobStatus.RUNNING,
            to=JobStatus.COMPLETED,
            then=partial(sessions.session_job_record_final, recorded),
            result="ok",
        )

    def fails(job) -> None:
        raise RuntimeError("the record failed")

    monkeypatch.setattr(sessions, "session_job_finished", fails)
    with django_capture_on_commit_callbacks(execute=True):
        assert job_transition(
            job_id=broken.pk,
            frm=JobStatus.RUNNING,
            to=JobStatus.FAILED,
            then=partial(sessions.session_job_record_final, broken),
        )
    after_run = []
    monkeypatch.setattr(sessions, "session_job_finished", after_run.append)
    for job in (recorded, broken, unfinished):
        sessions.session_job_finished_after_run(job)
    # Recorded with its final status: spared. A failed record, or no final status reached: here.
    assert after_run == [broken, unfinished]
    sessions.session_job_finished_after_run(recorded)  # once only: the mark is gone
    assert after_run == [broken, unfinished, recorded]


def test_the_next_turns_wake_up_waits_for_the_final_status_to_commit(
    caller, monkeypatch, django_capture_on_commit_callbacks
):
    # Recorded in the final status's transaction: a worker woken before its commit would find the
    # session still busy with this turn, and the next turn would wait for a sweep.
    woken = []
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: woken.append(1))
    session = session_for_call(caller=caller, external_id="woken", model="haiku")
    turn, _next = _turn(caller, session), _turn(caller, session)
    Job.objects.filter(pk=turn.pk).update(status=JobStatus.RUNNING)
    with django_capture_on_commit_callbacks() as committed:
        assert job_transition(
            job_id=turn.pk,
            frm=JobStatus.RUNNING,
            to=JobStatus.COMPLETED,
            then=partial(session_job_finished, turn),
            result="ok",
        )
        assert woken == [], "not before the commit"
    for callback in committed:
        callback()
    assert woken == [1]


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
    # Nor does the holder's own task loop: the turn would take its job slot, and a job of another
    # key would wait for a turn that runs as long as the upstream answers.
    assert job_claim_next(worker="host:1") is None
    # Its holder's poller claims it, through the normal claim (restricted to its sessions).
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


# -- the holder's claim (queue.job_claim_session_turn) and its ring (jobs.wakeup) ----------------


def _held(caller, name: str, worker: str = "host:1") -> ClaudeSession:
    now = timezone.now()
    Worker.objects.get_or_create(
        name=worker,
        defaults={"host": "host", "pid": 1, "cluster": "c", "started_at": now, "heartbeat_at": now},
    )
    session = session_for_call(caller=caller, external_id=name, model="haiku")
    ClaudeSession.objects.filter(pk=session.pk).update(
        live_worker=worker, live_until=now + timedelta(seconds=60)
    )
    return session


def test_the_holder_claims_its_sessions_turns_one_after_the_other(caller):
    session = _held(caller, "direct")
    first, second = _turn(caller, session), _turn(caller, session)
    assert job_claim_session_turn(worker="host:1", session_ids=[session.pk]).pk == first.pk
    assert job_claim_session_turn(worker="host:1", session_ids=[session.pk]) is None, "one turn at a time"
    _complete(first, "11111111-1111-1111-1111-111111111111")
    claimed = job_claim_session_turn(worker="host:1", session_ids=[session.pk])
    assert claimed.pk == second.pk and claimed.status == JobStatus.RUNNING and claimed.worker == "host:1"
    assert claimed.max_budget_usd is None


def test_the_holders_claim_takes_only_the_sessions_whose_cli_is_idle(caller):
    busy, idle = _held(caller, "busy-cli"), _held(caller, "idle-cli")
    waiting = _turn(caller, busy)  # the earlier turn, but its session's CLI is busy
    turn = _turn(caller, idle)
    assert job_claim_session_turn(worker="host:1", session_ids=[idle.pk]).pk == turn.pk
    assert job_claim_session_turn(worker="host:1", session_ids=[idle.pk]) is None
    assert job_claim_session_turn(worker="host:1", session_ids=[busy.pk]).pk == waiting.pk


def test_a_claimed_turn_starts_without_reading_its_session_again(caller):
    session = _held(caller, "read-once")
    _turn(caller, session)
    claimed = job_claim_session_turn(worker="host:1", session_ids=[session.pk])
    with CaptureQueriesContext(connection) as queries:
        session_job_start(claimed)
    assert not [q for q in queries if '"jobs_claudesession"' in q["sql"]]
    assert claimed.options["cwd"].endswith(str(session.pk))


def test_the_holders_claim_says_whether_another_sessions_turn_waits(caller):
    # The poller looks again at once only then; else it waits for the next ring.
    one, two, three = _held(caller, "one"), _held(caller, "two"), _held(caller, "three")
    first, later_of_one = _turn(caller, one), _turn(caller, one)
    second = _turn(caller, two)
    claimed = job_claim_session_turn(worker="host:1", session_ids=[one.pk, two.pk, three.pk])
    assert claimed.pk == first.pk and claimed.other_turns_waiting, "two's turn waits"
    claimed = job_claim_session_turn(worker="host:1", session_ids=[two.pk, three.pk])
    assert claimed.pk == second.pk and not claimed.other_turns_waiting, (
        "one's later turn is not two's or three's"
    )
    _complete(first, "11111111-1111-1111-1111-111111111111")
    claimed = job_claim_session_turn(worker="host:1", session_ids=[one.pk])
    assert claimed.pk == later_of_one.pk and not claimed.other_turns_waiting


def test_the_holders_claim_takes_only_sessions_it_still_holds(caller):
    session = _held(caller, "moved", worker="host:2")
    _turn(caller, session)
    assert job_claim_session_turn(worker="host:1", session_ids=[session.pk]) is None
    assert job_claim_session_turn(worker="host:1", session_ids=[]) is None


def test_the_holders_claim_respects_the_keys_running_cap(caller, owner_key):
    owner_key.row.max_running_jobs = 1
    owner_key.row.save()
    caller = Caller(api_key=owner_key.row)
    other = session_for_call(caller=caller, external_id="other", model="haiku")
    running = _turn(caller, other)
    assert job_claim_next(worker="host:2").pk == running.pk
    held = _held(caller, "capped")
    turn = _turn(caller, held)
    assert job_claim_session_turn(worker="host:1", session_ids=[held.pk]) is None
    _complete(running, "")
    assert job_claim_session_turn(worker="host:1", session_ids=[held.pk]).pk == turn.pk


def test_the_holders_claim_respects_the_default_cap_of_jwt_users(jwt_user, settings):
    settings.SESSION_KEEPALIVE_SECONDS = 300
    settings.JOB_MAX_RUNNING_PER_KEY = 1
    caller = Caller(user_id=jwt_user.row.pk)
    running = job_create(caller=caller, prompt="other", enqueue=False)
    assert job_claim_next(worker="host:2").pk == running.pk
    held = _held(caller, "user-capped")
    _turn(caller, held)
    assert job_claim_session_turn(worker="host:1", session_ids=[held.pk]) is None


def test_the_holders_claim_never_takes_a_child_job(caller):
    session = _held(caller, "children")
    parent = job_create(caller=caller, prompt="parent", enqueue=False)
    job_create(caller=caller, prompt="child", session=session, parent=parent, enqueue=False)
    assert job_claim_session_turn(worker="host:1", session_ids=[session.pk]) is None


def test_an_owner_with_a_budget_goes_through_the_fair_claim(caller, owner_key):
    ApiKey.objects.filter(pk=owner_key.row.pk).update(budget_daily_usd=Decimal("2"))
    session = _held(caller, "budget")
    turn, over = _turn(caller, session), _turn(caller, session)
    claimed = job_claim_session_turn(worker="host:1", session_ids=[session.pk])
    assert claimed.pk == turn.pk and claimed.max_budget_usd == pytest.approx(2)  # capped as any claim
    assert job_transition(job_id=turn.pk, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED, cost_usd=3)
    assert job_claim_session_turn(worker="host:1", session_ids=[session.pk]) is None
    over.refresh_from_db()
    assert over.status == JobStatus.CANCELLED and over.error_message.startswith("budget_exceeded")


def test_a_ring_reaches_the_holders_doorbell():
    worker = f"host:{uuid.uuid4().hex[:8]}"  # Redis channels are shared by every database index
    doorbell = wakeup.HolderDoorbell(worker)
    try:
        assert not doorbell.wait(0)
        wakeup.holder_ring(worker)
        assert doorbell.wait(5)
        assert not doorbell.wait(0), "the ring was consumed"
        doorbell.wake()  # from its own process
        assert doorbell.wait(5)
    finally:
        doorbell.close()


def test_a_turn_of_a_held_session_rings_its_holder_after_commit(
    caller, monkeypatch, django_capture_on_commit_callbacks
):
    session = _held(caller, "rung")
    rung, enqueued = [], []
    monkeypatch.setattr("jobs.compat_api.services.holder_ring", rung.append)
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: enqueued.append(1))
    with django_capture_on_commit_callbacks(execute=True):
        compat_turn_create(
            caller=caller,
            conversation=_openai(("user", "Hi")),
            model="haiku",
            max_tokens=None,
            session_key=session.external_id,
            extra={},
        )
        assert rung == [], "not before the turn's row is committed"
    assert rung == ["host:1"] and enqueued == [], "its holder, and no worker of the queue"
    with django_capture_on_commit_callbacks(execute=True):
        compat_turn_create(
            caller=caller,
            conversation=_openai(("user", "Hi")),
            model="haiku",
            max_tokens=None,
            session_key="not-held",
            extra={},
        )
    assert rung == ["host:1"] and enqueued == [1]


@pytest.mark.django_db(transaction=True)
def test_the_poller_claims_a_rung_turn_without_waiting_for_its_fallback_poll(
    caller, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.SESSION_LIVE_POLL_MS = 600_000  # only a ring can wake it within the test
    me = f"host:{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("jobs.live_cli.worker_me", lambda: me)
    session = _held(caller, "poller", worker=me)
    entry = live_cli.LiveCli(session_id=session.pk, signature="", root=Path("/nonexistent"), busy=False)
    entry.lease_until = time.time() + 60
    monkeypatch.setattr(live_cli, "registry", live_cli._Registry())
    live_cli.registry.put(entry)
    handed = queue.Queue()
    monkeypatch.setattr(live, "_pool", SimpleNamespace(submit=lambda run, job, entry: handed.put(job)))
    doorbell, stop = wakeup.HolderDoorbell(me), threading.Event()
    poller = threading.Thread(target=live._poller, args=(doorbell, stop), daemon=True)
    poller.start()
    try:
        time.sleep(0.3)  # the poller waits on its doorbell now
        with django_capture_on_commit_callbacks(execute=True):
            turn = compat_turn_create(
                caller=caller,
                conversation=_openai(("user", "Hi")),
                model="haiku",
                max_tokens=None,
                session_key=session.external_id,
                extra={},
            )
        claimed = handed.get(timeout=10)
        assert claimed.pk == turn.pk and claimed.worker == me
        assert entry.busy, "its CLI is taken for the turn"
    finally:
        stop.set()
        doorbell.wake()
        poller.join(10)
        doorbell.close()


def test_a_turns_wind_down_leaves_the_cli_the_next_turn_is_starting(caller, monkeypatch):
    # Turn 1 ran on the CLI the poller took for it. The client saw it end and sent turn 2 with a
    # changed history: turn 2 closed that CLI and is starting a new one (busy, no pid yet) while
    # turn 1's thread winds down. Offered idle, the starting CLI read as dead and the idle closer
    # closed it under its start: turn 2 then failed after 60 s ("Control request timeout: initialize").
    session = session_for_call(caller=caller, external_id="overlap", model="haiku")
    first = _turn(caller, session)
    monkeypatch.setattr(live_cli, "registry", live_cli._Registry())
    taken = live_cli.LiveCli(session_id=session.pk, signature="", root=Path("/nonexistent"), busy=False)
    live_cli.registry.put(taken)
    assert live_cli.registry.take(session.pk) is taken and taken.busy
    starting = live_cli.LiveCli(session_id=session.pk, signature="", root=Path("/nonexistent"))

    def turn_1(job) -> None:
        taken.last_job = str(job.pk)  # it ran on the CLI it took ...
        live_cli.kill(taken)  # ... which turn 2 closed, and started its own
        live_cli.registry.put(starting)

    monkeypatch.setattr(live, "_turn_runner", turn_1)
    monkeypatch.setattr(live, "close_old_connections", lambda: None)  # the test's transaction stays
    live._run_claimed(first, taken)
    assert starting.busy and not live_cli.registry.idle_ids(), "the next turn's CLI stays its own"
    # A turn that never reached the CLI it took (failed to prepare) offers that CLI again.
    spare = live_cli.LiveCli(session_id=session.pk, signature="", root=Path("/nonexistent"), busy=False)
    live_cli.registry.put(spare)
    monkeypatch.setattr(live, "_turn_runner", lambda job: None)
    live._run_claimed(_turn(caller, session), live_cli.registry.take(session.pk))
    assert live_cli.registry.idle_ids() == [session.pk]


def test_a_session_names_its_holder_only_while_it_is_alive_and_the_lease_lasts(caller, caplog):
    session = _held(caller, "holder")
    session.refresh_from_db()
    caplog.set_level("INFO", logger="jobs.live_routing")

    def not_held(why: str) -> None:
        # Its next turn goes to the queue and resumes from the store: the log says why.
        caplog.clear()
        assert live_routing.session_holder(session) is None
        [record] = caplog.records
        assert re.fullmatch(f"session {session.pk}: {why}", record.getMessage())

    assert live_routing.session_holder(session) == "host:1"
    Worker.objects.filter(name="host:1").update(stopping=True)
    not_held(r"its holder host:1 no longer counts \(stopping\)")
    Worker.objects.filter(name="host:1").update(
        stopping=False, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    not_held(r"its holder host:1 no longer counts \(last heartbeat 300\.\d s ago\)")
    Worker.objects.filter(name="host:1").delete()
    not_held(r"its holder host:1 no longer counts \(gone\)")
    session.live_until = timezone.now() - timedelta(seconds=1)
    not_held("its hold by host:1 is over")
