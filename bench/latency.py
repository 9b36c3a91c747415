"""Latency benchmark: what the service costs a caller over running the CLI by hand.

Starts the fake Anthropic API (``tests/fakes/anthropic_upstream.py``: it answers
at once, or in 8 chunks 50 ms apart for the first-token paths) and the service
as ``make run`` does (``manage.py serve``: HTTP server + worker cluster) on a
throw-away database, then takes interleaved samples of each path, round after
round, so that a slow moment of the machine hits every path alike:

- ``bare_cli``: ``claude -p --output-format stream-json`` started cold, prompt
  on stdin, until it exits (the yardstick: every ratio is to its median);
- ``jobs_poll``: ``POST /jobs`` until ``GET /jobs/{id}`` says ``completed``
  (polled every 20 ms); ``jobs_sse``: the same, followed on ``/events`` (with
  the service's defaults, each on a CLI a worker started before: ``jobs.spares``);
- ``compat``: the openai SDK's ``chat.completions.create``;
- ``first_token`` of the bare CLI (``--include-partial-messages``), of a
  streamed ``chat.completions`` and of a session's second turn;
- ``session_turn2``: the second turn of a compat session (non-streaming);
- ``sdk_turn2`` and ``sdk_turn2_first_token``: a warm turn of a
  ``ClaudeSDKClient`` kept alive in the bench's own process, no service: what
  the SDK and the CLI alone take (the session paths' yardstick).

For the ``jobs_poll`` samples it also reads the job's own timestamps from the
database and prints where the time went: submit → row written, row → claimed
by a worker (broker pickup), claimed → first CLI event (work folder, CLI
start), first → last event (the CLI's own run), last event → final status,
final status → the client saw it. For the ``session_turn2`` samples likewise,
with the time the fake upstream received the turn's request: send → row
written, row → claimed by the session's holder, claimed → the CLI's request
reached the upstream, → the result event's row, → final status, → the client
had the answer; and for ``sdk_turn2``, the same CLI's split with no service
(query → upstream request → result).

    .venv/bin/python bench/latency.py                      # embedded (SQLite, ORM broker)
    .venv/bin/python bench/latency.py --scaleout           # PostgreSQL + Redis (make test's defaults)
    .venv/bin/python bench/latency.py --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.anthropic_upstream import CLI_ENV, FakeAnthropic  # noqa: E402 - after the path is set

QUICK = "Say hello"
# Eight chunks 50 ms apart: the first token is measurable apart from the end.
SLOW = "[[slow:0.05]] one two three four five six seven eight"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bundled_cli() -> str:
    import claude_agent_sdk

    return str(Path(claude_agent_sdk.__file__).resolve().parent / "_bundled" / "claude")


class Service:
    """``manage.py serve`` on a throw-away database, with an API key."""

    def __init__(
        self,
        upstream: FakeAnthropic,
        work: Path,
        scaleout: bool,
        database_url: str,
        redis_url: str,
        *,
        workers: int = 2,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **CLI_ENV,
            "ANTHROPIC_BASE_URL": upstream.url,
            "CLAUDESVC_VAR_DIR": str(work / "var"),
            "JOB_WORKERS": str(workers),
            "RATE_LIMIT_ENABLE": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("DATABASE_URL", "REDIS_URL"):
            self.env.pop(name, None)
        if scaleout:
            self.env.update(
                DATABASE_URL=database_url, REDIS_URL=redis_url, Q_CLUSTER_NAME=f"bench-{uuid.uuid4().hex[:6]}"
            )
        self.log = open(work / "service.log", "w")  # noqa: SIM115 - closed in stop()
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True)
        out = subprocess.run(
            [*manage, "createapikey", f"bench-{uuid.uuid4().hex[:6]}"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        self.key = out.stdout.strip().splitlines()[-1]
        self.proc = subprocess.Popen(
            [*manage, "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        # A busy shared machine takes a while to import the workers (the health
        # check waits for their first heartbeat).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise SystemExit(f"the service did not start; see {self.log.name}")
        self.http = httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Paths:
    """One method per measured path; each returns seconds (and may record extra figures)."""

    def __init__(self, service: Service, upstream: FakeAnthropic, home: Path) -> None:
        from anthropic import Anthropic  # noqa: F401 - the SDKs are dev dependencies
        from openai import OpenAI

        self.service = service
        self.upstream = upstream
        self.home = home
        self.openai = OpenAI(base_url=f"{service.url}/v1", api_key=service.key, max_retries=0, timeout=120)
        self.jobs: list[
            tuple[str, float, float]
        ] = []  # (job id, submitted at, seen completed at), epoch seconds
        # (job id, event seq, received at (epoch seconds)) of the ``jobs_delivery`` samples
        self.received: list[tuple[str, int, float]] = []
        # (job id, sent at, answer in hand at) of the ``session_turn2`` samples, epoch seconds
        self.turns: list[tuple[str, float, float]] = []

    # -- the yardstick ------------------------------------------------------------------

    def _bare(self, prompt: str, *, first_token: bool) -> float:
        env = {**{k: v for k, v in self.service.env.items() if k in ("PATH", "LANG")}, **CLI_ENV}
        env.update(ANTHROPIC_BASE_URL=self.upstream.url, HOME=str(self.home))
        cmd = [bundled_cli(), "-p", "--output-format", "stream-json", "--verbose", "--model", "sonnet"]
        if first_token:
            cmd.append("--include-partial-messages")
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=self.home, text=True
        )
        proc.stdin.write(prompt)
        proc.stdin.close()
        first = None
        for line in proc.stdout:
            if first_token and first is None and '"text_delta"' in line:
                first = time.perf_counter() - started
        proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"bare CLI exited {proc.returncode}")
        return first if first_token else time.perf_counter() - started

    def bare_cli(self) -> float:
        return self._bare(QUICK, first_token=False)

    def bare_first_token(self) -> float:
        return self._bare(SLOW, first_token=True)

    # -- Jobs API ---------------------------------------------------------------------------

    def jobs_poll(self) -> float:
        submitted = time.time()
        started = time.perf_counter()
        job_id = self.service.http.post("/jobs", json={"prompt": QUICK}).json()["data"]["id"]
        while True:
            status = self.service.http.get(f"/jobs/{job_id}").json()["data"]["status"]
            if status in ("completed", "failed"):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        if status != "completed":
            raise RuntimeError(f"job {job_id} {status}")
        self.jobs.append((job_id, submitted, submitted + elapsed))
        return elapsed

    def jobs_sse(self) -> float:
        started = time.perf_counter()
        job_id = self.service.http.post("/jobs", json={"prompt": QUICK}).json()["data"]["id"]
        with self.service.http.stream(
            "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
        ) as r:
            for line in r.iter_lines():
                if line == "event: done":
                    break
        return time.perf_counter() - started

    def jobs_delivery(self) -> float:
        """A streamed job (partial messages, 8 chunks 50 ms apart) followed on ``/events``;
        every event's arrival time is kept for the delivery figures (``delivery``)."""
        started = time.perf_counter()
        job_id = self.service.http.post("/jobs", json={"prompt": SLOW, "partial_messages": True}).json()[
            "data"
        ]["id"]
        seq = None
        with self.service.http.stream(
            "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: ") and seq is not None:
                    self.received.append((job_id, seq, time.time()))
                    seq = None
                elif line == "event: done":
                    break
        return time.perf_counter() - started

    # -- Compat API --------------------------------------------------------------------------

    def compat(self) -> float:
        started = time.perf_counter()
        self.openai.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": QUICK}])
        return time.perf_counter() - started

    def _first_token(self, messages: list[dict], headers: dict | None = None) -> float:
        started = time.perf_counter()
        stream = self.openai.chat.completions.create(
            model="sonnet", messages=messages, stream=True, extra_headers=headers or {}
        )
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        return first

    def compat_first_token(self) -> float:
        return self._first_token([{"role": "user", "content": SLOW}])

    def _session(self) -> tuple[dict, list[dict]]:
        headers = {"X-Request-ID": f"bench-{uuid.uuid4().hex}"}
        history = [{"role": "user", "content": "My name is Ada."}]
        answer = self.openai.chat.completions.create(model="sonnet", messages=history, extra_headers=headers)
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
        return headers, history

    def session_turn2(self) -> float:
        headers, history = self._session()
        sent, started = time.time(), time.perf_counter()
        raw = self.openai.chat.completions.with_raw_response.create(
            model="sonnet", messages=[*history, {"role": "user", "content": QUICK}], extra_headers=headers
        )
        raw.parse()
        elapsed = time.perf_counter() - started
        self.turns.append((raw.headers["x-job-id"], sent, sent + elapsed))
        return elapsed

    def session_turn2_first_token(self) -> float:
        headers, history = self._session()
        return self._first_token([*history, {"role": "user", "content": SLOW}], headers)

    # -- the warm yardstick: a live ClaudeSDKClient in this process, no service ----------------

    def _direct(self):
        if getattr(self, "_direct_client", None) is None:
            self._direct_client = DirectClient(self.upstream, self.home)
        return self._direct_client

    def sdk_turn2(self) -> float:
        return self._direct().turn(QUICK, first_token=False)

    def sdk_turn2_first_token(self) -> float:
        return self._direct().turn(SLOW, first_token=True)


class DirectClient:
    """claude-agent-sdk's ``ClaudeSDKClient`` kept alive in the bench's own process: a warm
    turn with nothing but the SDK and the CLI (the yardstick of the session paths)."""

    def __init__(self, upstream: FakeAnthropic, home: Path) -> None:
        import asyncio
        import threading

        from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        config = home / "direct-sdk"
        config.mkdir(exist_ok=True)
        env = {**CLI_ENV, "ANTHROPIC_BASE_URL": upstream.url, "CLAUDE_CONFIG_DIR": str(config)}
        options = ClaudeAgentOptions(
            env=env, cwd=str(home), model="sonnet", include_partial_messages=True, setting_sources=[]
        )
        self.client = ClaudeSDKClient(options)
        self._run(self.client.connect())
        self.turns: list[tuple[float, float]] = []  # (query sent, result in hand) of warm turns, epoch
        self.turn(QUICK, first_token=False)  # its first turn: the CLI's start
        self.turns.clear()

    def _run(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def turn(self, prompt: str, *, first_token: bool) -> float:
        from claude_agent_sdk.types import StreamEvent

        async def one() -> float:
            sent, started = time.time(), time.perf_counter()
            first = None
            await self.client.query(prompt)
            async for message in self.client.receive_response():
                if (
                    first is None
                    and isinstance(message, StreamEvent)
                    and message.event.get("delta", {}).get("type") == "text_delta"
                ):
                    first = time.perf_counter() - started
            elapsed = time.perf_counter() - started
            if not first_token:
                self.turns.append((sent, sent + elapsed))
            return first if first_token else elapsed

        return self._run(one())


def breakdown(service: Service, jobs: list[tuple[str, float, float]]) -> dict[str, float]:
    """Median seconds per stage of the ``jobs_poll`` samples, from the job's own rows."""
    os.environ.update(
        {k: v for k, v in service.env.items() if k in ("DATABASE_URL", "CLAUDESVC_VAR_DIR", "REDIS_URL")}
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claudesvc.settings")
    import django

    django.setup()
    from jobs.models import Job

    stages = defaultdict(list)
    spare = 0
    for job_id, submitted, seen in jobs:
        job = Job.objects.get(pk=job_id)
        spare += bool((job.options or {}).get("spare_cli"))
        times = list(job.events.order_by("seq").values_list("created_at", flat=True))
        if not (times and job.started_at and job.finished_at):
            continue
        t = {
            "created": job.created_at.timestamp(),
            "claimed": job.started_at.timestamp(),
            "first": times[0].timestamp(),
            "last": times[-1].timestamp(),
            "finished": job.finished_at.timestamp(),
        }
        stages["submit → row written"].append(t["created"] - submitted)
        stages["row → claimed by a worker"].append(t["claimed"] - t["created"])
        stages["claimed → first CLI event"].append(t["first"] - t["claimed"])
        stages["first → last CLI event"].append(t["last"] - t["first"])
        stages["last event → final status"].append(t["finished"] - t["last"])
        stages["final status → client saw it"].append(seen - t["finished"])
    medians = {name: statistics.median(values) for name, values in stages.items()}
    print(f"jobs_poll samples on a pre-started CLI (jobs.spares): {spare} of {len(jobs)}")
    return medians


def _upstream_request_at(upstream: FakeAnthropic, start: float, end: float) -> float | None:
    """When the first request of a conversation (one that offers tools) reached the fake
    upstream between ``start`` and ``end`` (the samples run one at a time)."""
    return next((r["at"] for r in upstream.main_requests() if start <= r["at"] <= end), None)


def warm_breakdown(
    upstream: FakeAnthropic, turns: list[tuple[str, float, float]], direct: list[tuple[float, float]]
) -> dict[str, float]:
    """Median seconds per stage of the ``session_turn2`` samples (from the turn's rows and the
    upstream's clock), then of ``sdk_turn2``'s. Call after ``breakdown`` (Django is set up)."""
    from jobs.models import Job

    stages = defaultdict(list)
    for job_id, sent, done in turns:
        job = Job.objects.get(pk=job_id)
        result = job.events.filter(type="result").values_list("created_at", flat=True).first()
        asked = _upstream_request_at(upstream, sent, done)
        if not (result and asked and job.started_at and job.finished_at):
            continue
        stages["send → row written"].append(job.created_at.timestamp() - sent)
        stages["row → claimed by the session's holder"].append(
            (job.started_at - job.created_at).total_seconds()
        )
        stages["claimed → the CLI's request reached the upstream"].append(asked - job.started_at.timestamp())
        stages["upstream request → result event's row"].append(result.timestamp() - asked)
        stages["result event's row → final status"].append((job.finished_at - result).total_seconds())
        stages["final status → the client had the answer"].append(done - job.finished_at.timestamp())
    for sent, done in direct:
        asked = _upstream_request_at(upstream, sent, done)
        if asked:
            stages["no service (sdk_turn2): query → upstream request"].append(asked - sent)
            stages["no service (sdk_turn2): upstream request → result in hand"].append(done - asked)
    return {name: statistics.median(values) for name, values in stages.items()}


def delivery(received: list[tuple[str, int, float]]) -> dict[str, float]:
    """Seconds from an event's row being written by the worker to its arrival at an SSE client.

    Call after ``breakdown`` (which set Django up in this process)."""
    from jobs.models import JobEvent

    delays = []
    by_job = defaultdict(dict)
    for job_id, seq, at in received:
        by_job[job_id][seq] = at
    for job_id, arrivals in by_job.items():
        for seq, written in JobEvent.objects.filter(job_id=job_id).values_list("seq", "created_at"):
            if seq in arrivals:
                delays.append(arrivals[seq] - written.timestamp())
    if not delays:
        return {}
    delays.sort()

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p * len(delays)))]

    return {"events": len(delays), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": delays[-1]}


def _psql(url: str, sql: str, *, check: bool) -> None:
    subprocess.run(["psql", url.rsplit("/", 1)[0] + "/postgres", "-qc", sql], check=check)


def database_create(url: str | None) -> str:
    """A fresh PostgreSQL database for one run: ``url``'s, or claudesvc_bench_<random>."""
    url = url or f"postgres://postgres@127.0.0.1:5432/claudesvc_bench_{uuid.uuid4().hex[:8]}"
    _psql(url, f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[-1]}", check=True)
    _psql(url, f"CREATE DATABASE {url.rsplit('/', 1)[-1]}", check=True)
    return url


def database_drop(url: str) -> None:
    _psql(url, f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[-1]} WITH (FORCE)", check=False)


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The deployment a bench runs against: embedded, or ``--scaleout`` on a database of its own."""
    parser.add_argument("--scaleout", action="store_true", help="PostgreSQL + Redis instead of SQLite")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a database this run creates and drops (default: claudesvc_bench_<random> on 127.0.0.1)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds between two samples (the service settles)"
    )
    add_setup_arguments(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="claudesvc-latency-"))
    home = work / "home"
    home.mkdir()
    if args.scaleout:
        args.database_url = database_create(args.database_url)
    with FakeAnthropic() as upstream:
        service = Service(upstream, work, args.scaleout, args.database_url, args.redis_url)
        paths = Paths(service, upstream, home)
        order: list[tuple[str, Callable[[], float]]] = [
            ("bare_cli", paths.bare_cli),
            ("jobs_poll", paths.jobs_poll),
            ("jobs_sse", paths.jobs_sse),
            ("jobs_delivery", paths.jobs_delivery),
            ("compat", paths.compat),
            ("session_turn2", paths.session_turn2),
            ("bare_first_token", paths.bare_first_token),
            ("compat_first_token", paths.compat_first_token),
            ("session_turn2_first_token", paths.session_turn2_first_token),
            ("sdk_turn2", paths.sdk_turn2),
            ("sdk_turn2_first_token", paths.sdk_turn2_first_token),
        ]
        samples: dict[str, list[float]] = defaultdict(list)
        try:
            for _, fn in order:  # warm-up: page cache, first connections, the CLI's first run
                fn()
            paths.jobs.clear()
            paths.received.clear()
            paths.turns.clear()
            paths._direct().turns.clear()
            for _ in range(args.rounds):
                for name, fn in order:
                    samples[name].append(fn())
                    # What a sample leaves running (a spare CLI starting for the next job, a
                    # folder deleted in the background) must not slow the next path's sample.
                    time.sleep(args.settle)
            stages = breakdown(service, paths.jobs)
            warm_stages = warm_breakdown(upstream, paths.turns, paths._direct().turns)
            delivered = delivery(paths.received)
        finally:
            service.stop()
    shutil.rmtree(work, ignore_errors=True)
    if args.scaleout:
        from django.db import connections

        connections.close_all()
        database_drop(args.database_url)

    setup = "scale-out (PostgreSQL + Redis)" if args.scaleout else "embedded (SQLite, ORM broker)"
    print(f"# {setup}, {args.rounds} interleaved rounds, medians")
    print("| path | median | vs bare CLI |")
    print("| --- | --- | --- |")
    cold = statistics.median(samples["bare_cli"])
    first = statistics.median(samples["bare_first_token"])
    for name, _ in order:
        median = statistics.median(samples[name])
        base = first if name.endswith("first_token") else cold
        print(f"| {name} | {median * 1000:.0f} ms | {median / base:.2f}x |")
    warm, direct = (
        statistics.median(samples[n]) for n in ("session_turn2_first_token", "sdk_turn2_first_token")
    )
    print(
        f"\na session's warm turn, first token: {warm * 1000:.0f} ms; the same on a ClaudeSDKClient with no "
        f"service: {direct * 1000:.0f} ms; the service adds {(warm - direct) * 1000:+.0f} ms"
    )
    print("\n| stage of a Jobs API job (jobs_poll) | median |")
    print("| --- | --- |")
    for name, value in stages.items():
        print(f"| {name} | {value * 1000:.0f} ms |")
    print("\n| stage of a session's warm turn (session_turn2) | median |")
    print("| --- | --- |")
    for name, value in warm_stages.items():
        print(f"| {name} | {value * 1000:.0f} ms |")
    if delivered:
        print(
            f"\nevent delivery, worker's row → SSE client ({delivered['events']} events): "
            + ", ".join(f"{k} {delivered[k] * 1000:.0f} ms" for k in ("p50", "p90", "p99", "max"))
        )
    print(json.dumps({name: statistics.median(v) for name, v in samples.items()}))


if __name__ == "__main__":
    main()
