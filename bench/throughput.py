"""Throughput benchmark: calls per second at saturation (issue 18, item 6).

Starts the fake Anthropic API (it answers at once) and the service as ``make
run`` does (``bench/latency.py``'s ``Service``: ``manage.py serve`` on a
throw-away database, 2 worker processes), then runs, one after the other:

- (a) ``oneshot``: N clients (threads, the openai SDK), each sending one-shot
  ``chat.completions.create`` calls back to back, no session;
- (b) ``sessions``: N clients each in a multi-turn compat session of its own
  (``X-Request-ID``), non-streaming, each turn sending the whole history
  back as OpenAI clients do. The first turn of each session (its CLI start)
  is made before the timed window; the window measures the warm turns, which
  a live session serves from its CLI (``SESSION_KEEPALIVE_SECONDS``).

- (c) ``ceiling`` (only when asked, ``--only ceiling``): the same N
  conversations with no service at all, N ``ClaudeSDKClient``s of
  claude-agent-sdk driven directly from one process against the same fake
  upstream, warm turns back to back: what the CLI alone allows on this
  machine, the bound of any wrapper's (b). ``--pace SECONDS`` makes each
  client wait that long after each turn: a CLI's CPU per turn at the pace
  of (b)'s CLIs (a CLI also works on timers between turns, so its CPU per
  turn grows as its turns are spaced out).

Another OpenAI-compatible server (a peer wrapper, side by side): start the fake
upstream on its own (``python -m tests.fakes.anthropic_upstream --port 8765``),
start the peer against it (``ANTHROPIC_BASE_URL=http://127.0.0.1:8765`` and the
variables of ``tests.fakes.anthropic_upstream.CLI_ENV``), then aim the clients
at it with ``--target-url http://127.0.0.1:<its port>/v1 --target-key <its key>``
instead of starting the service.

Each client has an API key of its own (the per-key running cap would
otherwise bound one key's clients). For each part it prints calls per second
over the window and the p50/p95 latency of a call.

    .venv/bin/python bench/throughput.py                     # embedded (SQLite, ORM broker)
    .venv/bin/python bench/throughput.py --scaleout          # PostgreSQL + Redis
    .venv/bin/python bench/throughput.py --clients 6 --seconds 20 --only sessions
    .venv/bin/python bench/throughput.py --only ceiling      # the CLI alone, no service
    .venv/bin/python bench/throughput.py --only ceiling --pace 0.3   # ... at (b)'s pace
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.latency import Service, add_setup_arguments, database_create, database_drop  # noqa: E402 - after the path is set
from tests.fakes.anthropic_upstream import FakeAnthropic  # noqa: E402


def extra_keys(service: Service, n: int) -> list[str]:
    keys = [service.key]
    for _ in range(n - 1):
        out = subprocess.run(
            [sys.executable, "manage.py", "createapikey", f"bench-{uuid.uuid4().hex[:6]}"],
            cwd=ROOT,
            env=service.env,
            check=True,
            capture_output=True,
            text=True,
        )
        keys.append(out.stdout.strip().splitlines()[-1])
    return keys


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_clients(name: str, clients: list, seconds: float) -> dict:
    """Run each client's ``call()`` back to back for ``seconds``; calls/s and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    window_start = time.monotonic()

    def loop(client) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                client.call()
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                time.sleep(0.1)
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = time.monotonic() - window_start
    result = {
        "part": name,
        "clients": len(clients),
        "calls": len(latencies),
        "per_second": len(latencies) / window,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": percentile(latencies, 95),
        "errors": len(errors),
    }
    print(
        f"{name:9} {result['clients']} clients: {result['calls']:5d} calls in {window:5.1f} s = "
        f"{result['per_second']:6.2f}/s   p50 {result['p50'] * 1000:7.1f} ms   p95 {result['p95'] * 1000:7.1f} ms"
        + (f"   errors {len(errors)} (first: {errors[0]})" if errors else ""),
        flush=True,
    )
    return result


class CpuAccount:
    """CPU time (user + system) spent during a window, by part of the machine: the service's
    web process, its worker cluster, the CLI process trees under it, PostgreSQL's and Redis'
    processes, and this bench's own process (the clients and the fake upstream). Processes
    that ended inside the window are missed (in the sessions part the CLIs live on)."""

    def __init__(self, service: Service | None) -> None:
        # None: no service, the CLIs are this process's children (``--only ceiling``).
        self.service = service
        self.start = self._sample()

    def _sample(self) -> dict[int, tuple[str, float]]:
        import os

        import psutil

        parts: dict[int, tuple[str, float]] = {}

        def add(proc, part: str) -> None:
            with contextlib.suppress(psutil.Error):  # ended meanwhile: its time is not counted
                times = proc.cpu_times()
                parts[proc.pid] = (part, times.user + times.system)

        if self.service is None:
            for proc in psutil.Process().children(recursive=True):
                add(proc, "CLIs")
        # The service gone (it failed): its parts are missing from the figures, not made up.
        with contextlib.suppress(psutil.Error, OSError):
            serve = psutil.Process(self.service.proc.pid) if self.service else None
            for child in serve.children() if serve else []:
                part = (
                    "web" if "--port" in " ".join(child.cmdline()) or "uvicorn" in child.name() else "workers"
                )
                add(child, part)
                for proc in child.children(recursive=True):
                    try:
                        in_group = os.getpgid(proc.pid) == os.getpgid(child.pid)
                    except OSError:
                        continue
                    add(proc, part if in_group else "CLIs")
        for proc in psutil.process_iter(["name"]):
            name = proc.info["name"] or ""
            if name.startswith("postgres"):
                add(proc, "PostgreSQL")
            elif name.startswith("redis-server"):
                add(proc, "Redis")
        add(psutil.Process(), "bench (clients, fake upstream)")
        return parts

    def spent(self) -> dict[str, float]:
        """CPU seconds by part since this account was opened."""
        spent: dict[str, float] = {}
        for pid, (part, cpu) in self._sample().items():
            before = self.start.get(pid)
            spent[part] = spent.get(part, 0.0) + cpu - (before[1] if before and before[0] == part else 0.0)
        return spent

    def report(self, calls: int) -> None:
        self.print(self.spent(), calls)

    @staticmethod
    def print(spent: dict[str, float], calls: int) -> None:
        total = sum(spent.values())
        print(
            f"CPU per call ({calls} calls): "
            + ", ".join(f"{part} {sec / max(calls, 1) * 1000:.1f} ms" for part, sec in sorted(spent.items()))
            + f"; in all {total / max(calls, 1) * 1000:.1f} ms",
            flush=True,
        )


def live_cli_memory(service: Service) -> None:
    """RSS and USS of each CLI process tree (its process group) kept under the service:
    live session CLIs, and the pre-started ones (``jobs.spares``: they work in ``JOBS_ROOT/spares/``);
    and the CPU each spends while it waits, no call running: in the first 10 s after the
    last turn (the CLI tidies up after a turn) and from 30 to 40 s (what keeping it costs)."""
    import os

    import psutil

    groups: dict[int, list] = {}
    try:
        own = os.getpgid(service.proc.pid)
        for proc in psutil.Process(service.proc.pid).children(recursive=True):
            try:
                pgid = os.getpgid(proc.pid)
            except OSError:
                continue
            if pgid != own:
                groups.setdefault(pgid, []).append(proc)
    except psutil.Error:
        return

    def cpu_seconds(procs: list) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:  # ended meanwhile
                continue
            total += times.user + times.system
        return total

    trees: dict[str, list[tuple[float, float, list]]] = {"live CLIs": [], "spare CLIs": []}
    for procs in groups.values():
        try:
            clis = [p for p in procs if p.name() == "claude" or p.cmdline()[:1] == ["claude"]]
            if not clis:
                continue
            kind = "spare CLIs" if any("/spares/" in p.cwd() for p in clis) else "live CLIs"
        except psutil.Error:
            continue
        r = u = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            r, u = r + info.rss, u + info.uss
        trees[kind].append((r / 2**20, u / 2**20, procs))

    def idle_cpu(seconds: float) -> dict[int, float]:
        """Per tree, CPU ms a second over the next ``seconds``."""
        before = {id(t[2]): cpu_seconds(t[2]) for found in trees.values() for t in found}
        time.sleep(seconds)
        return {
            id(t[2]): 1000 * (cpu_seconds(t[2]) - before[id(t[2])]) / seconds
            for found in trees.values()
            for t in found
        }

    after_turn = idle_cpu(10)
    time.sleep(20)
    kept = idle_cpu(10)
    for kind, found in trees.items():
        if not found:
            continue
        rss, uss = [t[0] for t in found], [t[1] for t in found]
        early = [after_turn[id(t[2])] for t in found]
        late = [kept[id(t[2])] for t in found]
        print(
            f"{kind}: {len(found)} process trees; per tree RSS median {statistics.median(rss):.0f} MB "
            f"(max {max(rss):.0f}), USS median {statistics.median(uss):.0f} MB (max {max(uss):.0f}); "
            f"idle, CPU median {statistics.median(early):.1f} ms a second in the first 10 s, "
            f"{statistics.median(late):.1f} from 30 to 40 s (max {max(late):.1f})",
            flush=True,
        )


def live_summary(db: Path) -> None:
    """How the session turns ran: on a reused live CLI, or not (embedded database only)."""
    import json
    import sqlite3
    from datetime import datetime

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT options, status, created_at, started_at, finished_at FROM jobs_job WHERE session_id IS NOT NULL"
        ).fetchall()
    live = [json.loads(r[0]).get("live") or {} for r in rows]
    reused = sum(1 for x in live if x.get("reused"))
    failed = sum(1 for r in rows if r[1] != "completed")
    print(f"session turns: {len(rows)}, on a reused live CLI: {reused}, not completed: {failed}", flush=True)

    def at(text):
        return datetime.fromisoformat(text) if text else None

    waits, runs = [], []
    for row, info in zip(rows, live, strict=True):
        created, started, finished = at(row[2]), at(row[3]), at(row[4])
        if info.get("reused") and created and started and finished:
            waits.append((started - created).total_seconds() * 1000)
            runs.append((finished - started).total_seconds() * 1000)
    if waits:
        print(
            f"reused turns: created -> claimed median {statistics.median(waits):.0f} ms, "
            f"claimed -> finished median {statistics.median(runs):.0f} ms",
            flush=True,
        )


class OneShot:
    def __init__(self, openai_client) -> None:
        self.client = openai_client

    def call(self) -> None:
        self.client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": f"Say hello {uuid.uuid4().hex[:6]}"}]
        )


class SessionClient:
    """A multi-turn conversation; a new session after ``max_turns`` so prompts stay small."""

    def __init__(self, openai_client, max_turns: int) -> None:
        self.client = openai_client
        self.max_turns = max_turns
        self.new()

    def new(self) -> None:
        self.session = f"bench-{uuid.uuid4().hex[:10]}"
        self.messages: list[dict] = []

    def call(self) -> None:
        if len(self.messages) >= 2 * self.max_turns:
            self.new()
        self.messages.append({"role": "user", "content": f"Turn {len(self.messages) // 2 + 1}, say ok"})
        answer = self.client.chat.completions.create(
            model="haiku", messages=self.messages, extra_headers={"X-Request-ID": self.session}
        )
        self.messages.append({"role": "assistant", "content": answer.choices[0].message.content})


def sdk_ceiling(upstream: FakeAnthropic, n: int, seconds: float, pace: float = 0) -> None:
    """(c): N live ``ClaudeSDKClient``s driven directly, warm turns per second (no service);
    each waits ``pace`` seconds after each turn."""
    import asyncio

    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

    from tests.fakes.anthropic_upstream import CLI_ENV

    counts = [0] * n

    async def one(i: int, home: str, start: asyncio.Event, stop: asyncio.Event) -> None:
        env = {**CLI_ENV, "ANTHROPIC_BASE_URL": upstream.url, "CLAUDE_CONFIG_DIR": home}
        async with ClaudeSDKClient(ClaudeAgentOptions(env=env, cwd=home, setting_sources=[])) as client:
            await client.query("hello")
            async for _ in client.receive_response():
                pass
            await start.wait()
            while not stop.is_set():
                await client.query("hello")
                async for _ in client.receive_response():
                    pass
                counts[i] += 1
                if pace:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pace)

    async def run() -> float:
        start, stop = asyncio.Event(), asyncio.Event()
        with tempfile.TemporaryDirectory(prefix="claudesvc-ceiling-") as tmp:
            homes = [Path(tmp) / str(i) for i in range(n)]
            for home in homes:
                home.mkdir()
            tasks = [asyncio.create_task(one(i, str(h), start, stop)) for i, h in enumerate(homes)]
            await asyncio.sleep(8)  # every CLI started and answered once
            cpu = CpuAccount(None)
            start.set()
            began = time.perf_counter()
            await asyncio.sleep(seconds)
            stop.set()
            elapsed = time.perf_counter() - began
            spent = cpu.spent()  # before the CLIs exit
            await asyncio.gather(*tasks)
        return elapsed, spent

    elapsed, spent = asyncio.run(run())
    total = sum(counts)
    print(
        f"ceiling  {n} ClaudeSDKClients, no service"
        + (f", {pace:g} s after each turn" if pace else "")
        + f": {total} turns in {elapsed:5.1f} s = {total / elapsed:6.2f}/s"
    )
    CpuAccount.print(spent, total)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-turns", type=int, default=1000, help="turns per session before a new one")
    parser.add_argument("--only", choices=["oneshot", "sessions", "ceiling"])
    parser.add_argument(
        "--pace", type=float, default=0, help="(c) only: seconds each client waits after each turn"
    )
    parser.add_argument("--target-url", help="an OpenAI-compatible base URL to measure instead (…/v1)")
    parser.add_argument("--target-key", default="none", help="its API key")
    add_setup_arguments(parser)
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the service (JOB_WORKERS)"
    )
    args = parser.parse_args()
    if args.pace < 0 or (args.pace and args.only != "ceiling"):
        parser.error(f"--pace {args.pace:g}: a number of seconds ≥ 0, with --only ceiling")

    from openai import OpenAI

    if args.only == "ceiling":
        with FakeAnthropic() as upstream:
            sdk_ceiling(upstream, args.clients, args.seconds, args.pace)
        return
    if args.target_url:
        # A peer, already running against a fake upstream of its own (see the module's docstring).
        clients = [
            OpenAI(base_url=args.target_url, api_key=args.target_key, max_retries=0, timeout=120)
            for _ in range(args.clients)
        ]
        print(f"setup: {args.target_url}, {args.clients} clients, {args.seconds:g} s per part", flush=True)
        if args.only in (None, "oneshot"):
            oneshot = [OneShot(c) for c in clients]
            oneshot[0].call()
            run_clients("oneshot", oneshot, args.seconds)
        if args.only in (None, "sessions"):
            sessions = [SessionClient(c, args.max_turns) for c in clients]
            for session in sessions:
                session.call()
            run_clients("sessions", sessions, args.seconds)
        return
    if args.scaleout:
        args.database_url = database_create(args.database_url)

    with (
        FakeAnthropic() as upstream,
        tempfile.TemporaryDirectory(prefix="claudesvc-throughput-") as tmp,
    ):
        work = Path(tmp)
        service = Service(
            upstream, work, args.scaleout, args.database_url, args.redis_url, workers=args.workers
        )
        try:
            keys = extra_keys(service, args.clients)
            clients = [
                OpenAI(base_url=f"{service.url}/v1", api_key=k, max_retries=0, timeout=120) for k in keys
            ]
            print(
                f"setup: {'scale-out (PostgreSQL + Redis)' if args.scaleout else 'embedded (SQLite)'}, "
                f"{args.workers} workers, "
                f"{args.clients} clients, {args.seconds:g} s per part",
                flush=True,
            )
            if args.only in (None, "oneshot"):
                oneshot = [OneShot(c) for c in clients]
                oneshot[0].call()  # warm-up: the first call probes the CLI
                cpu = CpuAccount(service)
                result = run_clients("oneshot", oneshot, args.seconds)
                cpu.report(result["calls"])
            if args.only in (None, "sessions"):
                sessions = [SessionClient(c, args.max_turns) for c in clients]
                warm = [threading.Thread(target=s.call) for s in sessions]  # each session's first turn
                for t in warm:
                    t.start()
                for t in warm:
                    t.join()
                cpu = CpuAccount(service)
                result = run_clients("sessions", sessions, args.seconds)
                cpu.report(result["calls"])
                live_cli_memory(service)
                if not args.scaleout:
                    live_summary(work / "var" / "db.sqlite3")
        finally:
            service.stop()
            if args.scaleout:
                database_drop(args.database_url)


if __name__ == "__main__":
    main()
