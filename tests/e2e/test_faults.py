"""Faults a deployment meets, on the real service: a restart with jobs running and
queued, a worker SIGKILLed, the web server SIGKILLed in the middle of an SSE and a
WebSocket stream, Redis restarted. Each checks that no job is stranded, none runs
twice, and no event is lost or repeated.

Every test starts the service the way an operator does (``manage.py serve``, or
``serve --web-only`` and ``serve --worker-only``), with a short
``SHUTDOWN_GRACE_SECONDS``, on the test database. The session's shared service
stops its workers meanwhile: every worker on the database serves the one queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from claudesvc.auth import Caller
from claudesvc.management.commands.serve import asgi_server_command
from jobs.models import FINAL_STATUSES, Job, JobEvent, JobStatus
from jobs.services import job_create
from tests.conftest import Key
from tests.e2e.conftest import ROOT, _free_port, other_services_paused, service_env, wait_until_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

GRACE = 2  # SHUTDOWN_GRACE_SECONDS of these deployments
STALE = 10  # JOB_STALE_SECONDS (service_env)
# What the issue allows for a graceful stop, plus a margin for a loaded CI machine.
STOP_LIMIT = GRACE + 5 + 3


class Deployment:
    """One service's processes, each in a session of its own so a test can kill it whole."""

    def __init__(self, work: Path, extra: dict[str, str]) -> None:
        self.work = work
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(
            work,
            {
                "SHUTDOWN_GRACE_SECONDS": str(GRACE),
                "JOB_SWEEP_SECONDS": "1",
                "HEALTH_WORKER_MAX_AGE_SECONDS": "30",
            },
        )
        self.env.update(extra)  # last: a test may point the service elsewhere (DATABASE_URL …)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def serve(self, *flags: str) -> subprocess.Popen:
        return self.start("serve", [sys.executable, "manage.py", "serve", "--port", str(self.port), *flags])

    def web(self) -> subprocess.Popen:
        return self.start("web", asgi_server_command("127.0.0.1", self.port))

    def worker(self) -> subprocess.Popen:
        return self.start("worker", [sys.executable, "manage.py", "serve", "--worker-only"])

    def ready(self) -> None:
        assert wait_until_healthy(self.url, timeout=120), self.logs()
        from jobs.models import Worker

        deadline = time.monotonic() + 120
        while not Worker.objects.filter(cluster=self.env["Q_CLUSTER_NAME"]).exists():
            assert time.monotonic() < deadline, f"no worker started:\n{self.logs()}"
            time.sleep(0.3)

    def tree(self) -> list[psutil.Process]:
        procs = []
        for proc in self.procs.values():
            try:
                root = psutil.Process(proc.pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return procs

    def kill_all(self) -> None:
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-5000:] for p in sorted(self.work.glob("*.log")))


@pytest.fixture
def others_paused() -> Iterator[None]:
    with other_services_paused():
        yield


@pytest.fixture
def deploy(upstream, others_paused, tmp_path) -> Iterator:
    made: list[Deployment] = []

    def make(**extra: str) -> Deployment:
        deployment = Deployment(tmp_path / f"d{len(made)}", extra)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.kill_all()


def client(deployment: Deployment, key: Key) -> httpx.Client:
    return httpx.Client(base_url=deployment.url, headers={"X-API-Key": key.secret}, timeout=30)


def submit(http: httpx.Client, prompt: str) -> str:
    response = http.post("/jobs", json={"prompt": prompt, "model": "haiku"})
    assert response.status_code == 202, response.text
    return response.json()["data"]["id"]


def wait_for(predicate, timeout: float, message: str = "") -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, message or "timed out"
        time.sleep(0.2)
    return time.monotonic() - started


def assert_ran_once_with_every_event_once(job_ids) -> None:
    for job_id in job_ids:
        seqs = list(JobEvent.objects.filter(job_id=job_id).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(len(seqs))), f"job {job_id}: events {seqs}"
        results = JobEvent.objects.filter(job_id=job_id, type="result").count()
        assert results <= 1, f"job {job_id} produced {results} results: it ran twice"


def gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (despite the name: what is not gone yet)."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


# -- restart ------------------------------------------------------------------------------------


def test_a_restart_with_running_and_queued_jobs_runs_every_job_exactly_once(deploy, owner_key):
    d = deploy()
    d.serve()
    d.ready()
    http = client(d, owner_key)
    ids = [submit(http, f"Job {i} [[slow:0.4]][[reply:a b c d e f g h]]") for i in range(6)]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING, cli_pid__isnull=False).count() == 2,
        90,
        "two jobs should be running",
    )
    running_at_stop = set(
        Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).values_list("pk", flat=True)
    )
    processes = d.tree()
    assert len(processes) >= 6  # serve, uvicorn, qcluster, sentinel, workers, CLIs …
    started = time.monotonic()
    d.procs["serve"].send_signal(signal.SIGTERM)
    d.procs["serve"].wait(timeout=60)
    took = time.monotonic() - started
    assert took <= STOP_LIMIT, f"the stop took {took:.1f} s:\n{d.logs()}"
    wait_for(lambda: not gone(processes), 3, f"left behind: {gone(processes)}")
    for job in Job.objects.filter(pk__in=ids):
        assert job.status != JobStatus.RUNNING, "nothing may stay running after a graceful stop"
        if job.pk in running_at_stop and job.status == JobStatus.FAILED:
            assert "shut down" in job.error_message and "SHUTDOWN_GRACE_SECONDS" in job.error_message
    waiting = list(Job.objects.filter(pk__in=ids, status=JobStatus.PENDING).values_list("pk", flat=True))
    assert len(waiting) >= 4

    restarted = time.monotonic()
    d.serve()
    d.ready()
    ready_after = time.monotonic() - restarted
    # Queued jobs start as soon as the workers are up: no message had to survive the restart.
    wait_for(
        lambda: Job.objects.filter(pk__in=waiting, started_at__isnull=False).count() >= 2,
        ready_after + 30,
        "queued jobs did not start after the restart",
    )
    wait_for(
        lambda: not Job.objects.filter(pk__in=ids).exclude(status__in=FINAL_STATUSES).exists(),
        150,
        "jobs stranded after the restart",
    )
    for job in Job.objects.filter(pk__in=ids):
        if job.status != JobStatus.COMPLETED:
            assert job.pk in running_at_stop and "shut down" in job.error_message, job.error_message
        else:
            assert job.result == "a b c d e f g h"
    assert_ran_once_with_every_event_once(ids)
    # Ctrl-C (what a terminal sends to make run) leaves nothing behind either.
    processes = d.tree()
    started = time.monotonic()
    d.procs["serve"].send_signal(signal.SIGINT)
    d.procs["serve"].wait(timeout=60)
    assert time.monotonic() - started <= STOP_LIMIT
    wait_for(lambda: not gone(processes), 3, f"left behind: {gone(processes)}")


# -- a worker dies ------------------------------------------------------------------------------


def test_a_killed_worker_fails_its_job_within_job_stale_seconds_and_leaves_no_cli(deploy, owner_key):
    d = deploy()
    d.serve()
    d.ready()
    http = client(d, owner_key)
    doomed = submit(http, "Long [[slow:1]][[reply:" + " ".join(f"w{i}" for i in range(60)) + "]]")
    wait_for(lambda: Job.objects.get(pk=doomed).cli_pid is not None, 90, "the job did not start")
    job = Job.objects.get(pk=doomed)
    worker_pid = int(job.worker.rpartition(":")[2])
    assert psutil.Process(worker_pid).ppid() != os.getpid()
    os.kill(worker_pid, signal.SIGKILL)
    took = wait_for(lambda: Job.objects.get(pk=doomed).is_final, STALE + 10, "the job was not failed")
    assert took <= STALE + 5, f"failed after {took:.1f} s"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "died" in job.error_message or "stopped responding" in job.error_message
    # Readers of its stream get the reason as its last event.
    assert job.events.order_by("-seq").first().data["message"] == job.error_message

    def cli_gone() -> bool:
        try:
            os.killpg(job.cli_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(cli_gone, 10, "the dead worker's CLI outlived it")
    # The cluster replaced the worker; the queue goes on.
    after = submit(http, "Next [[reply:still here]]")
    wait_for(lambda: Job.objects.get(pk=after).is_final, 90, "the next job did not run")
    assert Job.objects.get(pk=after).status == JobStatus.COMPLETED
    assert_ran_once_with_every_event_once([doomed, after])
    d.procs["serve"].send_signal(signal.SIGTERM)
    d.procs["serve"].wait(timeout=60)


# -- the web server dies mid-stream -------------------------------------------------------------


def _sse_events(response) -> Iterator[dict]:
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith("id:"):
            event["id"] = int(line[3:].strip())
        elif line.startswith("event:"):
            event["event"] = line[6:].strip()
        elif line.startswith("data:"):
            event["data"] = line[5:].strip()


def _restart_web(d: Deployment) -> None:
    os.killpg(d.procs["web"].pid, signal.SIGKILL)
    d.procs["web"].wait(10)
    d.web()
    assert wait_until_healthy(d.url, timeout=120), d.logs()


def test_a_killed_web_server_loses_no_event_of_an_sse_or_a_websocket_stream(deploy, owner_key):
    d = deploy()
    d.worker()
    d.web()
    d.ready()
    slow = "[[slow:0.3]][[reply:" + " ".join(f"t{i}" for i in range(30)) + "]]"

    # SSE: resume with Last-Event-ID on the restarted server.
    job = job_create(
        caller=Caller(api_key=owner_key.row), prompt=f"SSE {slow}", options={"partial_messages": True}
    )
    seen: list[int] = []
    with httpx.Client(base_url=d.url, headers={"X-API-Key": owner_key.secret}, timeout=30) as http:
        try:
            with http.stream("GET", f"/jobs/{job.pk}/events") as response:
                for event in _sse_events(response):
                    if "id" in event:
                        seen.append(event["id"])
                    if len(seen) >= 4:
                        _restart_web(d)
        except httpx.HTTPError:
            pass
        assert len(seen) >= 4
        ended = False
        with http.stream(
            "GET", f"/jobs/{job.pk}/events", headers={"Last-Event-ID": str(seen[-1])}
        ) as response:
            for event in _sse_events(response):
                if "id" in event:
                    seen.append(event["id"])
                if event.get("event") == "done":
                    ended = True
                    break
    assert ended
    stored = list(JobEvent.objects.filter(job_id=job.pk).order_by("seq").values_list("seq", flat=True))
    assert seen == stored == list(range(len(stored))), "an SSE event was lost or repeated"

    # WebSocket: resume with claude:resume after the last seq received.
    ws_url = f"ws://127.0.0.1:{d.port}/api/v1/claude/ws"
    headers = {"X-API-Key": owner_key.secret}
    outputs: list[tuple[int, str]] = []
    process_id = None
    killed = False
    # The server goes away under the socket (closing it raises too).
    with (
        contextlib.suppress(ConnectionClosed, OSError, TimeoutError),
        ws_connect(ws_url, additional_headers=headers, origin="http://127.0.0.1") as ws,
    ):
        ws.send(json.dumps({"event": "claude:execute", "data": {"prompt": f"WS {slow}", "model": "haiku"}}))
        while len(outputs) < 3:
            message = json.loads(ws.recv(timeout=90))
            data = message["data"]
            process_id = data.get("processId", process_id)
            if message["event"] == "claude:progress" and data["type"] == "output":
                outputs.append((data["seq"], data["output"]))
        _restart_web(d)
        killed = True
        while True:
            ws.recv(timeout=10)
    assert killed and len(outputs) >= 3
    result = None
    with ws_connect(ws_url, additional_headers=headers, origin="http://127.0.0.1") as ws:
        ws.send(
            json.dumps({"event": "claude:resume", "data": {"processId": process_id, "after": outputs[-1][0]}})
        )
        while result is None:
            message = json.loads(ws.recv(timeout=90))
            data = message["data"]
            if message["event"] == "claude:progress" and data["type"] == "output":
                outputs.append((data["seq"], data["output"]))
            elif message["event"] == "claude:complete":
                result = data
            elif message["event"] == "claude:error":
                pytest.fail(f"resume failed: {data}")
    seqs = [seq for seq, _ in outputs]
    assert seqs == sorted(set(seqs)), f"a WebSocket output was repeated or reordered: {seqs}"
    assert result["status"] == "completed"
    assert "".join(text for _, text in outputs) == result["result"]["stdout"], "a WebSocket output was lost"
    assert_ran_once_with_every_event_once([job.pk])
    d.procs["worker"].send_signal(signal.SIGTERM)
    d.procs["worker"].wait(timeout=60)


# -- Redis restarts -----------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path) -> Iterator:
    """A redis-server of this test's own, on a free port (never the shared one), restartable."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(
            subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the private redis-server did not start")

    def stop() -> None:
        procs[-1].terminate()
        procs[-1].wait(10)

    start()
    yield port, start, stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.skipif(not settings.REDIS_URL, reason="the scale-out deployment (Redis) only")
def test_a_redis_restart_strands_no_job(deploy, owner_key, private_redis):
    port, start_redis, stop_redis = private_redis
    d = deploy(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    d.serve()
    d.ready()
    http = client(d, owner_key)
    before = [submit(http, f"Before {i} [[reply:ok {i}]]") for i in range(2)]
    wait_for(lambda: Job.objects.filter(pk__in=before, status=JobStatus.COMPLETED).count() == 2, 120)

    stop_redis()  # its data goes with it: like a restart without persistence, or a flush
    # Submitted while Redis is away: the wake-up cannot be sent; the row is the queue.
    during = [
        job_create(caller=Caller(api_key=owner_key.row), prompt=f"During {i} [[reply:ok]]").pk
        for i in range(2)
    ]
    health = httpx.get(f"{d.url}/health", timeout=30)
    assert health.status_code == 503 and health.json()["checks"]["broker"]["ok"] is False
    answer = http.post("/jobs", json={"prompt": "Through HTTP [[reply:ok]]"})
    assert answer.status_code in (202, 503), answer.text  # never a 500, never a lie
    if answer.status_code == 202:
        during.append(answer.json()["data"]["id"])
    time.sleep(2)
    start_redis()
    wait_for(
        lambda: Job.objects.filter(pk__in=during, status=JobStatus.COMPLETED).count() == len(during),
        90,
        "jobs stranded across the Redis restart",
    )
    after = submit(http, "After [[reply:ok]]")
    wait_for(lambda: Job.objects.get(pk=after).status == JobStatus.COMPLETED, 60, "the queue did not recover")
    assert httpx.get(f"{d.url}/health", timeout=30).status_code == 200
    assert_ran_once_with_every_event_once([*before, *during, after])
    d.procs["serve"].send_signal(signal.SIGTERM)
    d.procs["serve"].wait(timeout=60)


# -- the database is away --------------------------------------------------------------------


@pytest.mark.skipif(not settings.REDIS_URL, reason="the scale-out deployment (PostgreSQL) only")
def test_a_web_server_whose_database_is_away_answers_a_clear_503(deploy, owner_key):
    """The shared PostgreSQL is not restarted here (other suites use it): the server is
    pointed at a port where no database listens, which is what it sees while one restarts."""
    d = deploy(DATABASE_URL=f"postgres://postgres@127.0.0.1:{_free_port()}/gone", DB_POOL_TIMEOUT="2")
    d.web()
    deadline = time.monotonic() + 120
    health = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            health = httpx.get(f"{d.url}/health", timeout=30)
            break
        time.sleep(0.3)
    assert health is not None and health.status_code == 503
    assert health.json()["checks"]["database"]["ok"] is False
    for path, headers in [
        ("/jobs", {"X-API-Key": owner_key.secret}),
        ("/api/v1/claude/processes", {"X-API-Key": owner_key.secret}),
        ("/v1/models", {"Authorization": f"Bearer {owner_key.secret}"}),
    ]:
        response = httpx.get(f"{d.url}{path}", headers=headers, timeout=30)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["Retry-After"] == "5"
        assert "database or broker" in response.text
