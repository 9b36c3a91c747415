"""The real service for end-to-end tests: the HTTP server ``manage.py serve`` runs
and a django-q2 cluster, in subprocesses, on the test database, with the real CLI
against the fake upstream."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from django.db import connection

from claudesvc.management.commands.serve import asgi_server_command

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, timeout: float = 120) -> bool:
    """Whether ``url``/health answered 200 within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _database_url() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@dataclass
class WorkerHost:
    """A django-q2 cluster as one worker host runs it. In a multi-host service each
    has its own ``JOBS_ROOT``, ``CLAUDE_HOME``, upload and temporary folders; it runs
    in a process group of its own, so a test can kill the whole host at once."""

    name: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log, "a")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        """A graceful stop, as an operator's service manager does it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """The host dies: SIGKILL to the cluster and every worker process under it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self.process = None

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def pids(self) -> set[int]:
        """The cluster and its worker processes (``Job.worker`` names one of them)."""
        if self.process is None:
            return set()
        try:
            root = psutil.Process(self.process.pid)
            return {root.pid, *(child.pid for child in root.children(recursive=True))}
        except psutil.Error:
            return set()


@dataclass
class Service:
    url: str
    env: dict[str, str]
    processes: list[subprocess.Popen]
    log_dir: Path
    hosts: dict[str, WorkerHost] = field(default_factory=dict)

    def client(self, key=None, **kwargs) -> httpx.Client:
        headers = {"X-API-Key": key.secret} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("*.log")))

    @contextlib.contextmanager
    def workers_paused(self) -> Iterator[None]:
        """Stop this service's worker hosts for a while, then start them again. Another
        service started on the same database pauses the ones before it: the jobs table
        is one queue and the schedules are shared, so an idle cluster could otherwise
        take its work. A graceful stop (they are idle between tests), not SIGSTOP: a
        frozen worker's heartbeat would go stale and read as a dead host."""
        stopped = [host for host in self.hosts.values() if host.process is not None]
        for host in stopped:
            host.stop()
        try:
            yield
        finally:
            for host in stopped:
                host.start()


# Services started in this test session, so that a later one can pause the earlier ones' workers.
_STARTED: list[Service] = []


def service_env(work: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a service under test, its files under ``work``."""
    (work / "workdirs").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **extra,
        "DATABASE_URL": _database_url(),
        "Q_CLUSTER_NAME": f"e2e-{uuid.uuid4().hex[:8]}",
        "JOBS_ROOT": str(work / "jobs"),
        "MEDIA_ROOT": str(work / "media"),
        "CLAUDE_HOME": str(work / "claude-home"),
        "FILE_UPLOAD_TEMP_DIR": str(work / "uploads"),
        "JOB_WORKERS": "2",
        "JOB_HEARTBEAT_SECONDS": "1",
        "JOB_STALE_SECONDS": "10",
        "JOB_KILL_GRACE_SECONDS": "1",
        "STREAM_POLL_MS": "100",
        "PROCESS_ALLOWED_WORKDIRS": str(work / "workdirs"),
        # The process tests submit and poll far more than seed 002's per-user
        # limits allow (5 executes a minute, 100 reads in 15 minutes).
        "RATE_LIMIT_PROCESS_EXECUTE": "1000/60s",
        "RATE_LIMIT_PROCESS_STATUS": "100000/15m",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def running_service(
    work: Path, extra_env: dict[str, str], *, worker_hosts: Sequence[str] = (), start_hosts: bool = True
) -> Iterator[Service]:
    """The HTTP server and its worker host(s), on the test database.

    Without ``worker_hosts``, one cluster shares the server's folders (the embedded
    layout). With names, each worker host gets folders of its own under ``work/<name>``
    and only ``MEDIA_ROOT`` (the storage backend, standing in for object storage)
    is shared; ``start_hosts=False`` leaves starting them to the test.
    """
    port = _free_port()
    env = service_env(work, extra_env)
    hosts = {}
    for name in worker_hosts:
        own = work / name
        (own / "tmp").mkdir(parents=True)
        host_env = {
            **env,
            "JOBS_ROOT": str(own / "jobs"),
            "CLAUDE_HOME": str(own / "claude-home"),
            "FILE_UPLOAD_TEMP_DIR": str(own / "uploads"),
            "TMPDIR": str(own / "tmp"),
        }
        hosts[name] = WorkerHost(name=name, env=host_env, log=work / f"qcluster-{name}.log")
    if not worker_hosts:
        hosts["qcluster"] = WorkerHost(name="qcluster", env=env, log=work / "qcluster.log")
    log = open(work / "http.log", "w")  # noqa: SIM115 - closed with the process
    http = subprocess.Popen(
        asgi_server_command("127.0.0.1", port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    svc = Service(url=f"http://127.0.0.1:{port}", env=env, processes=[http], log_dir=work, hosts=hosts)
    try:
        if start_hosts:
            for host in hosts.values():
                host.start()
                svc.processes.append(host.process)
        # Generous: on a busy machine the first request (Django start, the CLI version probe) is slow.
        if not wait_until_healthy(svc.url, timeout=300):
            raise RuntimeError(f"the service did not start:\n{svc.logs()}")
        _STARTED.append(svc)
        yield svc
    finally:
        if svc in _STARTED:
            _STARTED.remove(svc)
        http.terminate()
        for host in hosts.values():
            host.stop()
        try:
            http.wait(timeout=20)
        except subprocess.TimeoutExpired:
            http.kill()


@contextlib.contextmanager
def other_services_paused() -> Iterator[None]:
    """Pause the workers of every service already running in this test session."""
    with contextlib.ExitStack() as stack:
        for svc in list(_STARTED):
            stack.enter_context(svc.workers_paused())
        yield


@pytest.fixture(autouse=True)
def jobs_settled_before_the_flush(transactional_db) -> Iterator[None]:
    """After each test, before its tables are emptied: the jobs it left (an async
    execute, a compat call whose client stopped reading …) are cancelled and have
    ended. A worker still writing a job's rows while the test's teardown empties the
    tables deadlocks PostgreSQL's TRUNCATE, and on SQLite the next test would find
    rows of a job that no longer exists. Depends on ``transactional_db`` so that it
    is torn down before it."""
    yield
    from claudesvc.errors import Conflict
    from jobs.models import ACTIVE_STATUSES, Job
    from jobs.services import job_cancel

    left = list(Job.objects.filter(status__in=ACTIVE_STATUSES))
    if not left:
        return
    for job in left:
        with contextlib.suppress(Conflict):  # it ended meanwhile
            job_cancel(job=job, reason="the test ended")
    # A dead worker's job ends when the reaper fails it (JOB_STALE_SECONDS, 10 s here).
    deadline = time.monotonic() + 30
    while Job.objects.filter(status__in=ACTIVE_STATUSES).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the worker's writes after the final status (its session, its push)


@pytest.fixture(scope="session")
def service_extra_env(voxtral_server) -> dict[str, str]:
    """Environment added to the service's (one service per session): the fake
    Voxtral API for transcription jobs. Add here what other features need."""
    return {"VOXTRAL_BASE_URL": voxtral_server.url, "MISTRAL_API_KEY": voxtral_server.api_key}


@pytest.fixture(scope="session")
def service(
    django_db_setup, django_db_blocker, upstream, service_extra_env, tmp_path_factory
) -> Iterator[Service]:
    with (
        django_db_blocker.unblock(),
        running_service(tmp_path_factory.mktemp("service"), service_extra_env) as svc,
    ):
        yield svc
