"""Chaos bench: jobs submitted for a few minutes while processes are restarted and killed.

Starts the embedded deployment on a throw-away SQLite database, with the web
server (``serve --web-only``) and the worker cluster (``serve --worker-only``)
as separate process trees, and the real ``claude`` CLI against the fake
Anthropic API of the test suite (``tests/fakes/anthropic_upstream.py``; nothing
leaves the machine). A load generator submits a short job every
``--interval`` seconds; meanwhile, every 8-20 s, one of these happens at
random:

- the web server is stopped (SIGTERM) or killed (SIGKILL) and started again;
- the worker cluster is stopped (SIGTERM) and started again;
- one worker process is SIGKILLed (its cluster replaces it);
- the whole worker cluster, CLIs included, is SIGKILLed and started again.

Then the load stops, both trees run undisturbed until the queue is empty (at
most ``--drain`` seconds), and it prints: submitted, completed, failed (by
reason), stranded (still pending/running, or failed without a reason) and
duplicated (a job with more than one result, or events missing or repeated).
The last two must be 0.

    .venv/bin/python bench/chaos.py                 # 3 minutes
    .venv/bin/python bench/chaos.py --minutes 1 --seed 7
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.anthropic_upstream import FakeAnthropic  # noqa: E402 - after the path is set

GRACE = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    def __init__(self, env: dict[str, str], port: int, logs: Path) -> None:
        self.env, self.port, self.logs = env, port, logs
        self.url = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        flag = "--web-only" if name == "web" else "--worker-only"
        cmd = [sys.executable, "manage.py", "serve", flag, "--port", str(self.port)]
        log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def tree(self, name: str) -> list[psutil.Process]:
        proc = self.procs.get(name)
        if proc is None:
            return []
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGTERM)
        self.procs[name].wait(60)

    def kill(self, name: str) -> None:
        for proc in self.tree(name):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[name].wait(30)

    def kill_one_worker(self) -> bool:
        # serve -> qcluster -> sentinel -> workers (and pusher, monitor); a worker has a CLI child when busy.
        busy = []
        for proc in self.tree("worker"):
            with contextlib.suppress(psutil.Error):
                if any("claude" in " ".join(c.cmdline()) for c in proc.children()):
                    busy.append(proc)
        if not busy:
            return False
        with contextlib.suppress(psutil.Error):
            random.choice(busy).kill()
        return True

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=3).status_code in (200, 503):
                    return
            time.sleep(0.3)
        raise SystemExit("the web server did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between submissions")
    parser.add_argument("--drain", type=float, default=180, help="longest wait for the queue to empty")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # So that a SIGTERM to the bench still stops the service it started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    with (
        FakeAnthropic() as upstream,
        tempfile.TemporaryDirectory(prefix="claudesvc-chaos-", dir=ROOT / "var") as tmp,
    ):
        work = Path(tmp)
        env = {
            **os.environ,
            "CLAUDESVC_VAR_DIR": str(work),
            "ANTHROPIC_BASE_URL": upstream.url,
            "ANTHROPIC_API_KEY": "test-key",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "JOB_WORKERS": "2",
            "SHUTDOWN_GRACE_SECONDS": str(GRACE),
            "JOB_HEARTBEAT_SECONDS": "1",
            "JOB_STALE_SECONDS": "10",
            "JOB_SWEEP_SECONDS": "1",
            "JOB_KILL_GRACE_SECONDS": "1",
            "RATE_LIMIT_JOBS": "100000/60s",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("DATABASE_URL", "REDIS_URL"):
            env.pop(name, None)
        py = sys.executable
        subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        key = (
            subprocess.run(
                [py, "manage.py", "createapikey", "chaos"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        service = Service(env, free_port(), work)
        try:
            service.start("web")
            service.start("worker")
            service.wait_healthy()

            submitted: list[str] = []
            refused = 0
            stop_load = threading.Event()
            actions: collections.Counter[str] = collections.Counter()

            def load() -> None:
                nonlocal refused
                with httpx.Client(base_url=service.url, headers={"X-API-Key": key}, timeout=10) as http:
                    n = 0
                    while not stop_load.is_set():
                        n += 1
                        words = " ".join(f"w{n}.{i}" for i in range(rng.randint(3, 12)))
                        try:
                            response = http.post(
                                "/jobs",
                                json={"prompt": f"Job {n} [[slow:0.2]][[reply:{words}]]", "model": "haiku"},
                            )
                            if response.status_code == 202:
                                submitted.append(response.json()["data"]["id"])
                            else:
                                refused += 1
                        except httpx.HTTPError:
                            refused += 1  # the web server is down: a client would retry
                        stop_load.wait(args.interval)

            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            ends = time.monotonic() + args.minutes * 60
            while time.monotonic() < ends:
                time.sleep(rng.uniform(8, 20))
                action = rng.choice(
                    ["web-term", "web-kill", "worker-term", "worker-kill-one", "workers-kill-all"]
                )
                if action == "web-term":
                    service.stop("web")
                    service.start("web")
                    service.wait_healthy()
                elif action == "web-kill":
                    service.kill("web")
                    service.start("web")
                    service.wait_healthy()
                elif action == "worker-term":
                    service.stop("worker")
                    service.start("worker")
                elif action == "worker-kill-one":
                    if not service.kill_one_worker():
                        action = "worker-kill-one (none busy)"
                else:
                    service.kill("worker")
                    service.start("worker")
                actions[action] += 1
                print(f"{time.strftime('%H:%M:%S')} {action}; {len(submitted)} submitted", flush=True)
            stop_load.set()
            loader.join(30)

            db = sqlite3.connect(work / "db.sqlite3", timeout=30)
            ids = [i.replace("-", "") for i in submitted]
            marks = ",".join("?" * len(ids))

            def unfinished() -> int:
                return db.execute(
                    f"SELECT COUNT(*) FROM jobs_job WHERE id IN ({marks}) AND status IN ('pending','running')",
                    ids,
                ).fetchone()[0]

            drain_until = time.monotonic() + args.drain
            while ids and unfinished() and time.monotonic() < drain_until:
                time.sleep(1)
            rows = db.execute(
                f"SELECT id, status, error_message FROM jobs_job WHERE id IN ({marks})", ids
            ).fetchall()
            results = dict(
                db.execute(
                    f"SELECT job_id, COUNT(*) FROM jobs_jobevent WHERE type='result' AND job_id IN ({marks}) "
                    "GROUP BY job_id",
                    ids,
                ).fetchall()
            )
            seqs: dict[str, list[int]] = collections.defaultdict(list)
            for job_id, seq in db.execute(
                f"SELECT job_id, seq FROM jobs_jobevent WHERE job_id IN ({marks}) ORDER BY job_id, seq", ids
            ):
                seqs[job_id].append(seq)
            db.close()
            service.stop("web")
            service.stop("worker")
        finally:
            # Whatever happened, nothing of the service outlives the bench.
            for name in ("web", "worker"):
                with contextlib.suppress(Exception):
                    service.kill(name)

    statuses = collections.Counter(status for _, status, _ in rows)
    reasons = collections.Counter(
        (message.split(";")[0].split(" (")[0][:70] or "(no reason)")
        for _, status, message in rows
        if status not in ("completed", "pending", "running")
    )
    stranded = sum(
        1
        for _, status, message in rows
        if status in ("pending", "running") or (status != "completed" and not message)
    )
    stranded += len(ids) - len(rows)
    duplicated = sum(
        1
        for job_id, _, _ in rows
        if results.get(job_id, 0) > 1 or seqs[job_id] != list(range(len(seqs[job_id])))
    )
    print()
    print(f"chaos for {args.minutes:g} min, one job every {args.interval:g} s; actions: {dict(actions)}")
    print(f"submitted {len(ids)} (refused while the web server was down: {refused})")
    print(f"completed {statuses.get('completed', 0)}")
    print(f"failed with a reason {sum(reasons.values())}: {dict(reasons)}")
    print(f"stranded {stranded}")
    print(f"duplicated {duplicated}")
    raise SystemExit(1 if stranded or duplicated else 0)


if __name__ == "__main__":
    main()
