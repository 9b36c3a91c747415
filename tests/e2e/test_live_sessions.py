"""Live sessions (issue 18, jobs/live.py): a compat session's CLI stays alive
between turns on the worker that ran its last turn, and serves the next one.

The real service, the real CLI, the fake upstream. What the upstream receives
is the proof of what a CLI knew: a live CLI sends the whole conversation from
its own context; a resumed one from the stored transcript; a fresh start the
client's history inside one prompt.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import psutil
import pytest
from django.db import connections

from tests.conftest import Key
from tests.e2e.conftest import other_services_paused, running_service
from tests.e2e.test_compat_sdks import job_of, marker, oai, upstream_conversations, upstream_turns

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def key(db):
    from apikeys.services import api_key_create

    return Key(*api_key_create(name="live-e2e"))


@pytest.fixture
def outsider(db):
    from apikeys.services import api_key_create

    return Key(*api_key_create(name="live-e2e-outsider"))


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:  # also when it ends between looking it up and reading it
            return True
        time.sleep(0.1)
    return False


class Chat:
    """One OpenAI-style client conversation on a named session."""

    def __init__(self, service, secret: str, session: str | None = None) -> None:
        self.client = oai(service, secret)
        self.session = session or f"live-{uuid.uuid4().hex[:8]}"
        self.messages: list[dict] = []
        self.jobs: list = []

    def say(self, text: str, *, stream: bool = False) -> str:
        self.messages.append({"role": "user", "content": text})
        headers = {"X-Request-ID": self.session}
        if stream:
            with self.client.chat.completions.with_streaming_response.create(
                model="haiku", messages=self.messages, extra_headers=headers, stream=True
            ) as raw:
                job_id = raw.headers["x-job-id"]
                answer = "".join(
                    (chunk.choices[0].delta.content or "") for chunk in raw.parse() if chunk.choices
                )
        else:
            raw = self.client.chat.completions.with_raw_response.create(
                model="haiku", messages=self.messages, extra_headers=headers
            )
            job_id = raw.headers["x-job-id"]
            answer = raw.parse().choices[0].message.content
        self.messages.append({"role": "assistant", "content": answer})
        self.jobs.append(job_of(job_id))
        return answer

    @property
    def last(self):
        return self.jobs[-1]


def live_of(job) -> dict:
    return (job.options or {}).get("live") or {}


# -- on the shared service (SESSION_KEEPALIVE_SECONDS=300, 2 workers) -----------------------------


def test_the_second_turn_reuses_the_live_cli(service, key, upstream):
    chat, one, two, three = Chat(service, key.secret), marker(), marker(), marker()
    chat.say(f"My name is Ada {one} [[reply:Nice to meet you, Ada.]]")
    first = chat.last
    assert live_of(first) == {"pid": first.cli_pid, "reused": False, "turn": 1}
    chat.say(f"What is my name? {two}")
    second = chat.last
    # The same CLI process, no new start, no resume needed ...
    assert live_of(second) == {"pid": first.cli_pid, "reused": True, "turn": 2}
    assert second.cli_pid == first.cli_pid and psutil.pid_exists(first.cli_pid)
    # ... and the upstream got the whole conversation from that process's own context.
    assert upstream_turns(upstream, two) == [
        ("user", f"My name is Ada {one} [[reply:Nice to meet you, Ada.]]"),
        ("assistant", "Nice to meet you, Ada."),
        ("user", f"What is my name? {two}"),
    ]
    # Streaming stays token by token on a live CLI.
    answer = chat.say(f"Stream it {three} [[reply:one two three four]]", stream=True)
    assert answer == "one two three four"
    assert live_of(chat.last)["reused"] and chat.last.cli_pid == first.cli_pid
    assert len(upstream_turns(upstream, three)) == 5
    assert {j.status for j in chat.jobs} == {"completed"}


def test_a_session_never_sees_another_conversation(service, key, outsider, upstream):
    mine_a, mine_b = Chat(service, key.secret), Chat(service, key.secret)
    theirs = Chat(service, outsider.secret, session=mine_a.session)  # same name, other key
    secrets = {id(c): marker() for c in (mine_a, mine_b, theirs)}
    for chat in (mine_a, mine_b, theirs):
        chat.say(f"My secret is {secrets[id(chat)]}")
    for _ in range(2):
        for chat in (mine_a, mine_b, theirs):
            probe = marker()
            chat.say(f"What is my secret? {probe}")
            sent = " ".join(text for _, text in upstream_turns(upstream, probe))
            assert secrets[id(chat)] in sent
            assert not [s for c, s in secrets.items() if c != id(chat) and s in sent], (
                "another conversation leaked"
            )
    pids = {c.last.cli_pid for c in (mine_a, mine_b, theirs)}
    assert len(pids) == 3, "each session has a CLI of its own"
    for chat in (mine_a, mine_b, theirs):
        assert all(live_of(j)["reused"] for j in chat.jobs[1:])


def test_a_changed_history_is_honoured(service, key, upstream):
    chat, one, two, three, four = Chat(service, key.secret), marker(), marker(), marker(), marker()
    chat.say(f"The code is 4711 {one} [[reply:Noted.]]")
    chat.say(f"Remember it {two} [[reply:Sure.]]")
    pid = chat.last.cli_pid
    # The client edits its first message: the live CLI's conversation is stale.
    chat.messages[0]["content"] = f"The code is 1234 {one} [[reply:Noted.]]"
    chat.say(f"What is the code? {three}")
    fresh = chat.last
    assert not live_of(fresh)["reused"] and "resume" not in fresh.options
    [(role, sent)] = upstream_turns(upstream, three)
    assert role == "user" and "1234" in sent and "4711" not in sent
    assert sent.endswith(f"What is the code? {three}")
    # A faithful client goes on from there on the new CLI.
    chat.say(f"And again? {four}")
    assert live_of(chat.last)["reused"] and chat.last.cli_pid == fresh.cli_pid != pid
    turns = upstream_turns(upstream, four)
    assert len(turns) == 3 and "1234" in turns[0][1] and "4711" not in str(turns)


def test_a_dropped_message_is_honoured_and_anthropic_shapes_match(service, key, upstream):
    import anthropic

    client = anthropic.Anthropic(base_url=service.url, api_key=key.secret, max_retries=0, timeout=60)
    session, one, two, three = f"ant-{uuid.uuid4().hex[:8]}", marker(), marker(), marker()
    history: list[dict] = []

    def say(text: str) -> object:
        history.append({"role": "user", "content": [{"type": "text", "text": text}]})
        raw = client.messages.with_raw_response.create(
            model="haiku", max_tokens=200, messages=history, extra_headers={"X-Request-ID": session}
        )
        reply = raw.parse()
        # Sent back as blocks, as the Anthropic SDK's users do.
        history.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
        return job_of(raw.headers["x-job-id"])

    first = say(f"First {one}")
    second = say(f"Second {two}")
    # A faithful Anthropic-shaped history is not stale: the turn continues on the live CLI.
    assert not second.options.get("history_stale") and second.options.get("resume")
    assert live_of(second)["reused"] and second.cli_pid == first.cli_pid
    del history[0:2]  # the client dropped the first exchange
    third = say(f"Third {three}")
    assert not live_of(third)["reused"]
    [(_, sent)] = upstream_turns(upstream, three)
    assert two in sent and one not in sent


def test_cancel_during_a_live_turn_kills_it_and_the_next_turn_resumes(service, key, upstream):
    chat, one, two, three = Chat(service, key.secret), marker(), marker(), marker()
    chat.say(f"Hello {one} [[reply:Hi.]]")
    pid = chat.last.cli_pid
    from jobs.models import Job

    if True:
        done: dict = {}

        def slow():
            try:
                chat.client.chat.completions.create(
                    model="haiku",
                    messages=[
                        *chat.messages,
                        {"role": "user", "content": f"Slow {two} [[slow:1]] [[reply:{' x' * 30}]]"},
                    ],
                    extra_headers={"X-Request-ID": chat.session},
                )
            except Exception as exc:  # the cancelled call fails
                done["error"] = exc

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = Job.objects.filter(session__external_id=chat.session, status="running").first()
            if running:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        from jobs.services import job_cancel

        job_cancel(job=running)
        t.join(60)
    assert job_of(running.pk).status == "cancelled"
    assert _gone(pid), "the cancelled turn's live CLI was killed"
    chat.say(f"What did I say first? {three}")
    after = chat.last
    assert not live_of(after)["reused"] and after.options.get("resume")
    turns = upstream_turns(upstream, three)
    assert turns[0] == ("user", f"Hello {one} [[reply:Hi.]]") and two not in str(turns)


def test_deleting_a_session_closes_its_live_cli(service, key, upstream):
    chat = Chat(service, key.secret)
    chat.say(f"Hello {marker()}")
    pid = chat.last.cli_pid
    assert psutil.pid_exists(pid)
    with service.client(key) as http:
        assert http.delete(f"/v1/sessions/{chat.session}").status_code == 200
    assert _gone(pid)


def test_the_per_key_running_cap_holds_for_live_turns(service, key, upstream):
    key.row.max_running_jobs = 1
    key.row.save()
    chats = [Chat(service, key.secret) for _ in range(2)]
    for chat in chats:
        chat.say(f"Hello {marker()}")
    threads = [
        threading.Thread(target=chat.say, args=(f"Slow {marker()} [[slow:0.1]] [[reply:{' y' * 8}]]",))
        for chat in chats
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a, b = (chat.last for chat in chats)
    assert a.status == b.status == "completed"
    assert live_of(a)["reused"] and live_of(b)["reused"]
    assert a.finished_at <= b.started_at or b.finished_at <= a.started_at, (
        "two live turns of a capped key overlapped"
    )


# -- services of their own: the live CLI is gone, the conversation is not ---------------------------


@pytest.fixture
def own_service(tmp_path, service_extra_env, upstream, django_db_blocker, monkeypatch):
    """Start a service of the test's own with some settings (``JOB_WORKERS`` too)."""
    import tests.e2e.conftest as e2e

    plain = e2e.service_env

    def with_overrides(work, extra):
        return {**plain(work, extra), **extra}

    monkeypatch.setattr(e2e, "service_env", with_overrides)

    def start(**env):
        return running_service(tmp_path / uuid.uuid4().hex[:6], {**service_extra_env, **env})

    with django_db_blocker.unblock(), other_services_paused():
        yield start


def _resumed_correctly(chat, upstream, first_text: str, probe: str) -> None:
    job = chat.last
    assert not live_of(job).get("reused") and job.options.get("resume")
    turns = upstream_turns(upstream, probe)
    assert turns[0] == ("user", first_text) and len(turns) == 3


def test_after_the_keepalive_the_turn_resumes_from_the_store(own_service, key, upstream):
    with own_service(SESSION_KEEPALIVE_SECONDS="2") as svc:
        chat, first, probe = Chat(svc, key.secret), f"Remember {marker()}", marker()
        chat.say(first)
        pid = chat.last.cli_pid
        assert _gone(pid, timeout=10), "the idle live CLI was closed after the keep-alive"
        chat.say(f"What did I say? {probe}")
        _resumed_correctly(chat, upstream, first, probe)


def test_eviction_beyond_the_limit_and_a_worker_restart_resume_from_the_store(own_service, key, upstream):
    with own_service(SESSION_LIVE_MAX_PER_WORKER="1", JOB_WORKERS="1") as svc:
        a, b = Chat(svc, key.secret), Chat(svc, key.secret)
        first_a, first_b = f"A says {marker()}", f"B says {marker()}"
        a.say(first_a)
        pid_a = a.last.cli_pid
        b.say(first_b)  # the one worker may keep one live CLI: a's goes
        assert _gone(pid_a)
        probe = marker()
        a.say(f"What did A say? {probe}")
        _resumed_correctly(a, upstream, first_a, probe)
        pid_a2 = a.last.cli_pid
        # A worker restart (graceful): its live CLIs are closed, the conversations stay.
        host = svc.hosts["qcluster"]
        host.stop()
        assert _gone(pid_a2)
        host.start()
        probe = marker()
        b.say(f"What did B say? {probe}")
        _resumed_correctly(b, upstream, first_b, probe)


def test_a_killed_worker_leaves_no_live_cli_behind(own_service, key, upstream):
    with own_service() as svc:
        chat = Chat(svc, key.secret)
        chat.say(f"Hello {marker()}")
        pid = chat.last.cli_pid
        assert psutil.pid_exists(pid)
        svc.hosts["qcluster"].kill()
        assert _gone(pid), "the live CLI outlived its SIGKILLed worker"
        svc.hosts["qcluster"].start()
        probe = marker()
        # The dead holder's lease is ignored once its heartbeat is stale.
        chat.say(f"Again {probe}")
        assert chat.last.status == "completed" and len(upstream_turns(upstream, probe)) == 3


def test_a_recycled_worker_closes_its_live_clis_and_the_next_turn_resumes(own_service, key, upstream):
    # django-q2 replaces a worker process after JOB_WORKER_RECYCLE_TASKS tasks: here after each.
    with own_service(JOB_WORKER_RECYCLE_TASKS="1", JOB_WORKERS="1") as svc:
        chat, first, probe = Chat(svc, key.secret), f"Remember {marker()}", marker()
        chat.say(first)
        pid = chat.last.cli_pid
        assert _gone(pid), "the recycled worker's live CLI outlived it"
        assert _recycled(svc), "django-q2 replaced the process"
        chat.say(f"What did I say? {probe}")
        _resumed_correctly(chat, upstream, first, probe)


def test_a_live_turn_running_when_its_worker_is_recycled_completes_once(own_service, key, outsider, upstream):
    # The holder's poller runs the session's turns beside the task loop: the process's
    # second task (another key's call) recycles it while the turn is still answering.
    # The count of tasks must be exact, so nothing else sends this process a task: no sweep
    # wake-ups (JOB_SWEEP_SECONDS), no schedules, and a holder whose heartbeat is late on a
    # busy machine still counts (JOB_HEARTBEAT_SECONDS: else the web queues its turn).
    from django_q.models import Schedule

    from jobs.models import Job

    Schedule.objects.all().delete()
    slow = {"JOB_SWEEP_SECONDS": "300", "JOB_HEARTBEAT_SECONDS": "3"}
    with own_service(JOB_WORKER_RECYCLE_TASKS="2", JOB_WORKERS="1", **slow) as svc:
        chat, first, two, three = Chat(svc, key.secret), f"Remember {marker()}", marker(), marker()
        chat.say(first)  # the first task
        pid, holder = chat.last.cli_pid, chat.last.worker
        answers: list[str] = []

        def held_turn() -> None:
            try:
                answers.append(chat.say(f"Slowly {two} [[hold:{two}]] [[reply:a b c d e f g h]]"))
            finally:
                connections.close_all()  # this thread's own (it read the job's row)

        turn = threading.Thread(target=held_turn)
        turn.start()
        try:
            deadline = time.monotonic() + 30
            while not upstream_conversations(upstream, two):
                assert time.monotonic() < deadline, (
                    f"the held turn never reached the upstream\n{_story(svc, chat)}"
                )
                time.sleep(0.05)
            held = Job.objects.filter(session__external_id=chat.session, status="running").first()
            assert held is not None and held.worker == holder and not _logged(svc, "stopping", 0), (
                f"the turn runs on its holder's poller, which is not recycled yet\n{_story(svc, chat)}"
            )
            oai(svc, outsider.secret).chat.completions.create(
                model="haiku", messages=[{"role": "user", "content": f"Other {marker()}"}]
            )  # the second task: the process is recycled once it ends
            assert _logged(svc, "stopping (recycled)"), "the task loop ended and the process stops"
            held.refresh_from_db()
            assert held.status == "running", (
                f"the turn still ran when its worker's task loop ended\n{_story(svc, chat)}"
            )
        finally:
            upstream.release(two)  # the upstream answers the held turn only now
        turn.join(60)
        assert answers == ["a b c d e f g h"], "the turn answered in full"
        assert chat.last.status == "completed" and live_of(chat.last)["reused"]
        assert len(upstream_conversations(upstream, two)) == 1, "the turn ran once"
        assert _gone(pid), "the recycled worker's live CLI outlived it"
        assert _recycled(svc), "django-q2 replaced the process"
        chat.say(f"What did I say? {three}")
        turns = upstream_turns(upstream, three)
        assert not live_of(chat.last)["reused"] and turns[0] == ("user", first) and len(turns) == 5


def _story(svc, chat) -> str:
    """What a failure of the recycling tests needs: the session's turns, and the lines of the
    service's logs about tasks, claims, holders and stops (the whole logs are too long for CI's excerpt)."""
    from jobs.models import Job

    rows = Job.objects.filter(session__external_id=chat.session).order_by("created_at")
    turns = [(j.status, j.worker, j.started_at, j.finished_at, live_of(j)) for j in rows]
    words = (
        "processing",
        "claimed",
        "holder",
        "hold by",
        "stopping",
        "recycl",
        "finished",
        "Enqueued",
        "ERROR",
    )
    lines = [
        f"{path.name}: {line}"
        for path in sorted(svc.log_dir.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if any(word in line for word in words)
    ]
    return "turns: " + repr(turns) + "\n" + "\n".join(lines[-60:])


def _recycled(svc) -> bool:
    """Whether django-q2 says it replaced a worker process of ``svc`` (it notices within a second)."""
    return _logged(svc, "recycled worker")


def _logged(svc, text: str, timeout: float = 15) -> bool:
    """Whether ``svc``'s worker host logs ``text`` within ``timeout`` seconds."""
    log, deadline = svc.hosts["qcluster"].log, time.monotonic() + timeout
    while text not in log.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_keepalive_zero_disables_live_sessions(own_service, key, upstream):
    with own_service(SESSION_KEEPALIVE_SECONDS="0") as svc:
        chat, first, probe = Chat(svc, key.secret), f"Remember {marker()}", marker()
        chat.say(first)
        assert not live_of(chat.last)
        chat.say(f"What? {probe}")
        _resumed_correctly(chat, upstream, first, probe)
        assert httpx.get(f"{svc.url}/health").status_code == 200
