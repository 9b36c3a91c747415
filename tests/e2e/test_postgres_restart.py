"""PostgreSQL restarts under the real service (scale-out only): requests made while it
is away, and one already waiting for its job, answer a clear 503 in their family's
error shape with ``Retry-After``; once it is back ``/health`` turns 200 within a bounded
time, new jobs run, and no job is stranded or run twice.

The shared PostgreSQL (5432) is never touched: the test starts a cluster of its own
(``initdb`` into a temporary folder, run as the ``postgres`` OS user when the test
runs as root, trust authentication, a free port, its socket in that folder), creates
the database, migrates it, and starts ``manage.py serve`` on it as
``tests/e2e/test_faults.py`` does. The session's shared service need not be paused:
its workers serve the jobs table of another database (the queue is the table), and
its broker queue is another one too (each deployment has a ``Q_CLUSTER_NAME`` of its
own). The test reads the private database with psycopg, not the Django test connection.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings

from tests.e2e.conftest import ROOT, _free_port
from tests.e2e.test_faults import Deployment, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not settings.REDIS_URL, reason="the scale-out deployment (PostgreSQL + Redis) only"),
]

# DB_POOL_TIMEOUT of the deployment: how long a request waits for a connection before it
# gives up with the 503 (the default, 30 s, bridges a short restart instead).
POOL_TIMEOUT = 3
JOB_IDS_TABLE_QUERY = "SELECT id, status, error_message, result FROM jobs_job WHERE id = ANY(%s)"
SLOW = "[[slow:0.5]][[reply:" + " ".join(f"s{i}" for i in range(16)) + "]]"  # about 8 s of streaming
QUICK = "[[reply:q1 q2 q3]]"


def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, in a temporary folder, stoppable and restartable."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="claudesvc-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{self.log()}")

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "--auth=trust", "--username=postgres", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-w",
            "-t",
            "120",
            "-l",
            str(self.root / "pg.log"),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "120")

    def createdb(self, name: str) -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "pg.log").read_text(errors="replace")[-3000:]
        return ""

    def destroy(self) -> None:
        """Stop the cluster however it is, and remove its folder."""
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        if pidfile.exists():  # pg_ctl could not stop it: end the postmaster (and with it its backends)
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("the PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres OS user to run a private cluster as")
    pg = PrivatePostgres(bindir)
    try:
        pg.init()
        pg.start()
        pg.createdb("claudesvc")
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def deployment(upstream, private_pg, tmp_path) -> Iterator[Deployment]:
    d = Deployment(
        tmp_path / "d",
        {"DATABASE_URL": private_pg.url("claudesvc"), "DB_POOL_TIMEOUT": str(POOL_TIMEOUT)},
    )
    try:
        yield d
    finally:
        d.kill_all()


def _manage(d: Deployment, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=d.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _query(pg: PrivatePostgres, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(pg.url("claudesvc"), connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def _jobs(pg: PrivatePostgres, ids: list[str]) -> dict[str, tuple]:
    return {str(row[0]): row[1:] for row in _query(pg, JOB_IDS_TABLE_QUERY, (ids,))}


def _assert_unavailable(response: httpx.Response) -> dict:
    assert response.status_code == 503, (response.request.url, response.status_code, response.text)
    assert response.headers["Retry-After"] == "5", response.headers
    return response.json()


def test_a_postgres_restart_answers_503_meanwhile_and_then_strands_no_job(deployment, private_pg):
    d, pg = deployment, private_pg
    _manage(d, "migrate", "--noinput")
    secret = _manage(d, "createapikey", "pg-restart").strip().splitlines()[-1]
    d.serve()
    assert wait_for_health(d.url, 200, timeout=180), d.logs()
    wait_for(
        lambda: _query(pg, "SELECT count(*) FROM jobs_worker WHERE cluster = %s", (d.env["Q_CLUSTER_NAME"],))[
            0
        ][0],
        120,
        f"no worker started:\n{d.logs()}",
    )
    jobs_api = httpx.Client(base_url=d.url, headers={"X-API-Key": secret}, timeout=60)

    def submit(prompt: str) -> str:
        response = jobs_api.post("/jobs", json={"prompt": prompt, "model": "haiku"})
        assert response.status_code == 202, response.text
        return response.json()["data"]["id"]

    # Two jobs run (JOB_WORKERS=2) and stream slowly; three wait behind them.
    running = [submit(f"Running {i} {SLOW}") for i in range(2)]
    wait_for(
        lambda: (
            _query(
                pg, "SELECT count(*) FROM jobs_job WHERE id = ANY(%s) AND cli_pid IS NOT NULL", (running,)
            )[0][0]
            == 2
        ),
        120,
        f"the two slow jobs did not start:\n{d.logs()}",
    )
    queued = [submit(f"Queued {i} {QUICK}") for i in range(3)]
    # A request in flight when the database goes: a compat completion waiting for its (queued) job.
    in_flight: dict[str, httpx.Response | Exception] = {}

    def complete() -> None:
        try:
            in_flight["response"] = httpx.post(
                f"{d.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={"model": "haiku", "messages": [{"role": "user", "content": f"In flight {QUICK}"}]},
                timeout=120,
            )
        except Exception as exc:  # reported by the assertion below
            in_flight["response"] = exc

    waiter = threading.Thread(target=complete, daemon=True)
    waiter.start()
    time.sleep(1.5)  # the request is waiting for its job now (both workers are busy)
    assert "response" not in in_flight, in_flight

    pg.stop("fast")
    down_at = time.monotonic()
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "the waiting request did not end when the database went away"
    response = in_flight["response"]
    assert isinstance(response, httpx.Response), repr(response)
    body = _assert_unavailable(response)
    assert body["error"]["type"] == "api_error" and "database or broker" in body["error"]["message"], body

    # While it is down, every family answers a 503 in its own shape, without hanging.
    anthropic = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    probes = [
        ("GET", "/jobs", {"X-API-Key": secret}, None),
        ("GET", f"/jobs/{running[0]}", {"X-API-Key": secret}, None),
        ("POST", "/jobs", {"X-API-Key": secret}, {"prompt": "While down", "model": "haiku"}),
        ("GET", "/api/v1/claude/processes", {"X-API-Key": secret}, None),
        (
            "POST",
            "/v1/messages",
            anthropic,
            {"model": "haiku", "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]},
        ),
    ]

    # At once, as clients do: each waits DB_POOL_TIMEOUT for a connection, and the outage stays short.
    def probe(method: str, path: str, headers: dict, payload) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        answer = httpx.request(method, f"{d.url}{path}", headers=headers, json=payload, timeout=60)
        return answer, time.monotonic() - started

    with ThreadPoolExecutor(len(probes)) as pool:
        answers = list(pool.map(lambda p: probe(*p), probes))
    for (_, path, _, _), (answer, took) in zip(probes, answers, strict=True):
        assert took < POOL_TIMEOUT + 20, f"{path} took {took:.1f} s"
        body = _assert_unavailable(answer)
        if path.startswith("/jobs"):
            assert body["success"] is False and body["error"]["code"] == "service_unavailable", body
            assert "database or broker" in body["error"]["message"]
        elif path.startswith("/api/v1/claude"):
            assert body["success"] is False and body["error"]["code"] == "SERVICE_UNAVAILABLE", body
            assert body["meta"]["requestId"]
        else:
            assert body["type"] == "error" and body["error"]["type"] == "api_error", body
            assert "database or broker" in body["error"]["message"]
    health = httpx.get(f"{d.url}/health", timeout=60)
    assert health.status_code == 503 and health.json()["checks"]["database"]["ok"] is False, health.text
    if time.monotonic() - down_at < 3:
        time.sleep(3 - (time.monotonic() - down_at))  # a restart that takes a few seconds

    pg.start()
    back_at = time.monotonic()
    assert wait_for_health(d.url, 200, timeout=90), f"/health did not recover:\n{d.logs()}"
    recovered_in = time.monotonic() - back_at
    assert jobs_api.get("/jobs").status_code == 200

    after = [submit(f"After {i} {QUICK}") for i in range(2)]
    everything = [*running, *queued, *after]
    wait_for(
        lambda: all(
            status in ("completed", "failed", "cancelled") for status, *_ in _jobs(pg, everything).values()
        ),
        150,
        f"jobs stranded after the restart: {_jobs(pg, everything)}\n{d.logs()}",
    )
    jobs = _jobs(pg, everything)
    for job_id, (status, error, _result) in jobs.items():
        assert status in ("completed", "failed"), (job_id, status)
        if status == "failed":
            assert error, f"job {job_id} failed without a reason"
            assert job_id in running, f"only a job running across the outage may fail: {job_id} {error}"
            last = _query(
                pg,
                "SELECT type, data->>'message' FROM jobs_jobevent WHERE job_id = %s ORDER BY seq DESC LIMIT 1",
                (job_id,),
            )
            assert last == [("error", error)], f"job {job_id}: its readers do not learn why: {last}"
    for job_id in [*queued, *after]:
        assert jobs[job_id][0] == "completed" and jobs[job_id][2] == "q1 q2 q3", (job_id, jobs[job_id])
    # Ran once: one result event at most (exactly one for a completed job), events numbered without a gap.
    events = _query(
        pg, "SELECT job_id, seq, type FROM jobs_jobevent WHERE job_id = ANY(%s) ORDER BY seq", (everything,)
    )
    for job_id in everything:
        seqs = [seq for jid, seq, _ in events if str(jid) == job_id]
        assert seqs == list(range(len(seqs))), f"job {job_id}: events {seqs}"
        results = sum(1 for jid, _, kind in events if str(jid) == job_id and kind == "result")
        assert results <= 1, f"job {job_id} produced {results} results: it ran twice"
        if jobs[job_id][0] == "completed":
            assert results == 1, f"job {job_id} completed without its result event"
    print(f"/health was 200 again {recovered_in:.1f} s after PostgreSQL was back")

    d.procs["serve"].send_signal(signal.SIGTERM)
    d.procs["serve"].wait(timeout=60)


def wait_for_health(url: str, status: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=30).status_code == status:
                return True
        time.sleep(0.3)
    return False
