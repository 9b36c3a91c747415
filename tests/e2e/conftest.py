"""The real service for end-to-end tests: the HTTP server ``manage.py serve`` runs
and a django-q2 cluster, in subprocesses, on the test database, with the real CLI
against the fake upstream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
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
class Service:
    url: str
    env: dict[str, str]
    processes: list[subprocess.Popen]
    log_dir: Path

    def client(self, key=None, **kwargs) -> httpx.Client:
        headers = {"X-API-Key": key.secret} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="session")
def service_extra_env(voxtral_server) -> dict[str, str]:
    """Environment added to the service's (one service per session): the fake
    Voxtral API for transcription jobs. Add here what other features need."""
    return {"VOXTRAL_BASE_URL": voxtral_server.url, "MISTRAL_API_KEY": voxtral_server.api_key}


@pytest.fixture(scope="session")
def service(
    django_db_setup, django_db_blocker, upstream, service_extra_env, tmp_path_factory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("service")
    port = _free_port()
    env = {
        **os.environ,
        **service_extra_env,
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
    (work / "workdirs").mkdir()
    processes = []
    with django_db_blocker.unblock():
        for name, cmd in {
            "http": asgi_server_command("127.0.0.1", port),
            "qcluster": [sys.executable, "manage.py", "qcluster"],
        }.items():
            log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        svc = Service(url=f"http://127.0.0.1:{port}", env=env, processes=processes, log_dir=work)
        if not wait_until_healthy(svc.url):
            # Do not leave a server and a worker cluster behind on the test database.
            for proc in processes:
                proc.kill()
            raise RuntimeError(f"the service did not start:\n{svc.logs()}")
        yield svc
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
