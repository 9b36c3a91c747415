"""Scale-out as an operator runs it: one web server and two worker hosts that share
nothing but PostgreSQL, Redis and the storage backend.

Each host is a django-q2 cluster with its own ``JOBS_ROOT``, ``CLAUDE_HOME``,
upload and temporary folders; ``MEDIA_ROOT`` stands in for object storage. The
test picks the host that runs a job by having only that one up (the jobs table
is one queue: with both up, either may take any job), and checks which one did
from ``Job.worker``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tests.conftest import Key
from tests.e2e.conftest import Service, WorkerHost, other_services_paused, running_service
from tests.fakes.anthropic_upstream import _text_of
from tests.fakes.voxtral import random_script, tone_audio

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTS = ("host-a", "host-b")


@pytest.fixture(scope="module")
def multihost(django_db_setup, django_db_blocker, upstream, service_extra_env, tmp_path_factory):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip(
            "the multi-host test needs the scale-out setup (PostgreSQL + Redis): the embedded "
            "setup's SQLite file and ORM broker live on one machine"
        )
    work = tmp_path_factory.mktemp("multihost")
    with (
        django_db_blocker.unblock(),
        other_services_paused(),
        running_service(work, service_extra_env, worker_hosts=HOSTS, start_hosts=False) as svc,
    ):
        yield svc


def _wait_running(host: WorkerHost, since: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with host.log.open("rb") as fh:
            fh.seek(since)
            if b"running." in fh.read():
                return
        time.sleep(0.2)
    raise AssertionError(f"{host.name} did not start:\n{host.log.read_text()[-4000:]}")


@contextlib.contextmanager
def only(svc: Service, name: str) -> Iterator[WorkerHost]:
    """Host ``name`` up, the other one down."""
    for other in svc.hosts.values():
        if other.name != name:
            other.stop()
    host = svc.hosts[name]
    if host.process is None:
        since = host.log.stat().st_size if host.log.exists() else 0
        host.start()
        _wait_running(host, since)
    yield host


def ran_on(job, host: WorkerHost) -> bool:
    return int(job.worker.rsplit(":", 1)[1]) in host.pids()


def sent_upstream(upstream, mark: str) -> list[tuple[str, str]]:
    """(role, text) of the conversation the CLI sent in the last request whose last turn has ``mark``."""
    for request in reversed(upstream.main_requests()):
        turns = [
            (m["role"], _text_of(m["content"]))
            for m in request["body"]["messages"]
            if m["role"] in ("user", "assistant")
        ]
        if turns and mark in turns[-1][1]:
            return turns
    raise AssertionError(f"no upstream request ended with {mark}")


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


class Conversation:
    """An OpenAI-SDK client talking to one compat session, keeping the history as clients do."""

    def __init__(self, svc: Service, key: Key) -> None:
        self.client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key=key.secret, timeout=180, max_retries=0)
        self.session = f"multihost-{uuid.uuid4().hex[:8]}"
        self.history: list[dict] = []

    def say(self, text: str) -> str:
        self.history.append({"role": "user", "content": text})
        try:
            reply = self.client.chat.completions.create(
                model="haiku", messages=self.history, extra_headers={"X-Request-ID": self.session}
            )
        except openai.APIError:
            self.history.pop()  # a failed turn is not part of the conversation
            raise
        answer = reply.choices[0].message.content
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def last_job(self):
        from jobs.models import Job

        return Job.objects.filter(session__external_id=self.session).order_by("-created_at").first()


# Starting a cluster is most of the time here (tens of seconds each on a busy machine).
@pytest.mark.timeout(1200)
def test_a_conversation_keeps_its_context_across_hosts_and_a_dead_host_loses_only_its_turn(
    multihost, owner_key, upstream
):
    from django_q.models import Schedule

    from jobs.models import Job, JobStatus

    talk = Conversation(multihost, owner_key)
    facts = [marker() for _ in range(3)]
    for i, name in enumerate(["host-a", "host-b", "host-a"]):
        with only(multihost, name) as host:
            assert talk.say(f"Remember {facts[i]} [[reply:Noted {i}]]") == f"Noted {i}"
            job = talk.last_job()
            assert job.status == JobStatus.COMPLETED and ran_on(job, host), (job.worker, multihost.logs())
        # The CLI got only the new turn; the rest of the conversation came from the database …
        assert not any(fact in job.prompt for fact in facts[:i])
        # … and reached the upstream: every earlier turn, in order, with the answers.
        sent = sent_upstream(upstream, facts[i])
        said = "\n".join(text for _, text in sent)
        positions = [said.index(fact) for fact in facts[: i + 1]]
        assert positions == sorted(positions), said
        assert all(f"Noted {n}" in said for n in range(i))

    # Host A dies in the middle of the next turn.
    doomed = marker()
    with only(multihost, "host-a") as host_a:
        outcome: dict = {}

        def slow_turn() -> None:
            try:
                outcome["answer"] = talk.say(f"Remember {doomed} [[slow:1]] {' '.join(['word'] * 60)}")
            except openai.APIError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=slow_turn)
        caller.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = talk.last_job()
            if job and doomed in job.prompt and job.status == JobStatus.RUNNING and job.cli_pid:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the slow turn did not start on host-a:\n{multihost.logs()}")
        assert ran_on(job, host_a)
        time.sleep(2)  # it is streaming its answer now
        host_a.kill()
    lost = job

    # Host B takes over; its reaper fails the lost turn (made due now rather than within the minute).
    with only(multihost, "host-b") as host_b:
        Schedule.objects.filter(func="jobs.tasks.reap_stale_jobs").update(next_run=timezone.now())
        caller.join(timeout=150)
        assert not caller.is_alive(), multihost.logs()
        assert "error" in outcome, outcome
        lost.refresh_from_db()
        assert lost.status == JobStatus.FAILED and lost.error_message, lost.error_message
        # The CLI did not outlive its host.
        assert not _alive(lost.cli_pid)

        last = marker()
        assert talk.say(f"And {last}? [[reply:All noted]]") == "All noted"
        job = talk.last_job()
        assert job.status == JobStatus.COMPLETED and ran_on(job, host_b), (job.worker, multihost.logs())
    said = "\n".join(text for _, text in sent_upstream(upstream, last))
    # Resumed from the last completed turn: every fact, nothing of the lost turn.
    assert all(fact in said for fact in facts)
    assert doomed not in said

    # Nothing of the conversation is on the web server's disk, and the hosts hold only caches.
    assert not (Path(multihost.env["JOBS_ROOT"]) / "sessions").exists()
    assert Job.objects.filter(session__external_id=talk.session).count() == 5


def _alive(pid: int | None) -> bool:
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_done(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/jobs/{job_id}").json()["data"]
        if data["status"] not in ("pending", "running"):
            return data
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["host-b", "host-a"])  # host-b first: it is still up from the test above
def test_attachment_and_transcription_jobs_run_on_either_host(
    multihost, owner_key, upstream, voxtral_server, tmp_path, name
):
    from jobs.models import Job

    voxtral_server.reset()
    note = f"The code word is {marker()}."
    audio = tmp_path / "talk.ogg"
    spoken = [w.word.lower() for w in tone_audio(audio, random_script(17, 12))]
    with only(multihost, name) as host, multihost.client(owner_key) as client:
        prompt = (
            '[[tool:Read {"file_path": "attachments/note.txt"}]] '
            '[[tool:Write {"file_path": "out/answer.txt", "content": "read it"}]]'
        )
        created = client.post(
            "/jobs",
            data={"prompt": prompt},
            files={"attachments[]": ("note.txt", note.encode(), "text/plain")},
        )
        assert created.status_code == 202, created.text
        attachment_job = created.json()["data"]["id"]
        with audio.open("rb") as fh:
            created = client.post("/jobs", data={"type": "transcription"}, files={"file": ("talk.ogg", fh)})
        assert created.status_code == 202, created.text
        transcription_job = created.json()["data"]["id"]

        done = _wait_done(client, attachment_job)
        assert done["status"] == "completed", (done, multihost.logs())
        transcribed = _wait_done(client, transcription_job)
        assert transcribed["status"] == "completed", (transcribed, multihost.logs())
        for job_id in (attachment_job, transcription_job):
            assert ran_on(Job.objects.get(pk=job_id), host), multihost.logs()
        # The attachment reached the CLI on this host (through storage) ...
        assert any(note in json.dumps(r["body"]["messages"]) for r in upstream.main_requests())

    # ... and the outputs went back through storage: they download with every worker host down.
    for other in multihost.hosts.values():
        other.stop()
    with multihost.client(owner_key) as client:
        [artifact] = client.get(f"/jobs/{attachment_job}").json()["data"]["artifacts"]
        assert client.get(artifact["download_url"]).content == b"read it"
        info = client.get(f"/jobs/{transcription_job}").json()["data"]
        assert re.findall(r"[a-z]+", info["transcription"]["transcript"].lower()) == spoken
        for output in info["artifacts"]:
            got = client.get(output["download_url"])
            assert got.status_code == 200 and got.content, output
    # Nothing was written under the web server's own job folder.
    assert not (Path(multihost.env["JOBS_ROOT"]) / attachment_job).exists()
