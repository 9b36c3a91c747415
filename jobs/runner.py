"""Runs one job's Claude Code CLI through claude-agent-sdk.

The only module that touches the CLI. It turns a job and its tool policy into
SDK options, starts the CLI through ``cli_launcher`` (own process group,
allow-listed environment), appends every message as an event the moment it
arrives, and watches the job: heartbeat, cancel requests and deletion from
other processes, the timeout, and the memory/CPU of the CLI's process tree.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import claude_agent_sdk
import psutil
from asgiref.sync import sync_to_async
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    CLIConnectionError,
    ProcessError,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    UserMessage,
)
from django.conf import settings
from django.db import connections
from django.utils import timezone

from claudesvc.errors import NotFound
from jobs import fallback, live, worker
from jobs import loop as live_loop
from jobs.artifacts import artifacts_collect
from jobs.attachments import AttachmentUnavailable, PlacedAttachment, attachments_place
from jobs.filetypes import human_size
from jobs.models import Job, JobStatus
from jobs.progress import JobGone, JobProgress
from jobs.sandbox import cli_limits, sandbox_argv
from jobs.services import job_requeue, job_transition
from jobs.sessions import session_store_options
from jobs.upstream import upstream_status_of
from jobs.workspace import (
    OUTPUT_DIR_NAME,
    JobPaths,
    config_dir,
    home_prepare,
    session_home,
    workspace_finished,
    workspace_prepare,
    workspace_remove,
    workspace_sweep,
)

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).resolve().parent / "cli_launcher.py"
_WATCH_INTERVAL = 0.25
_CONTROL_INTERVAL = 0.5

# What each tool policy lets the CLI do. The safe ones take Bash away entirely
# (the CLI runs "read-only" shell commands even in dontAsk mode) and use
# dontAsk so anything not pre-approved is denied instead of waiting for a
# prompt nobody will answer. Reads without a rule are allowed only inside the
# working directory.
TOOL_POLICIES: dict[str, dict[str, Any]] = {
    "read_only": {"tools": ["Read", "Glob", "Grep"], "permission_mode": "dontAsk", "allowed_tools": []},
    "safe": {
        "tools": ["Read", "Glob", "Grep", "Write", "Edit"],
        "permission_mode": "dontAsk",
        "allowed_tools": [f"Edit(./{OUTPUT_DIR_NAME}/**)"],
    },
    "trusted": {"tools": {"type": "preset", "preset": "claude_code"}, "permission_mode": "bypassPermissions"},
}


# -- the CLI binary ----------------------------------------------------------------


def real_cli_path() -> str | None:
    """CLAUDE_CLI_PATH, else the binary bundled with claude-agent-sdk, else ``claude`` on PATH."""
    if settings.CLAUDE_CLI_PATH:
        return settings.CLAUDE_CLI_PATH
    bundled = Path(claude_agent_sdk.__file__).resolve().parent / "_bundled" / "claude"
    if bundled.exists():
        return str(bundled)
    return shutil.which("claude")


@dataclass(frozen=True)
class CliInfo:
    installed: bool
    path: str
    version: str | None = None
    error: str | None = None


@lru_cache(maxsize=4)
def _cli_info(path: str) -> CliInfo:
    if not path or not os.access(path, os.X_OK):
        return CliInfo(
            installed=False, path=path or "claude", error=f"Claude CLI not found at {path or 'PATH'}"
        )
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CliInfo(installed=False, path=path, error=f"Claude CLI at {path} cannot run: {exc}")
    if out.returncode != 0:
        return CliInfo(
            installed=False, path=path, error=f"Claude CLI at {path} failed: {out.stderr.strip()[:300]}"
        )
    match = re.search(r"\d+\.\d+\.\d+", out.stdout)
    return CliInfo(installed=True, path=path, version=match.group(0) if match else out.stdout.strip())


def cli_info() -> CliInfo:
    """Whether the CLI can run and its version; probed once per process and path."""
    return _cli_info(real_cli_path() or "")


# -- SDK messages as events ----------------------------------------------------------------

_BLOCK_TYPES = {
    "TextBlock": "text",
    "ThinkingBlock": "thinking",
    "ToolUseBlock": "tool_use",
    "ToolResultBlock": "tool_result",
    "ServerToolUseBlock": "server_tool_use",
    "ServerToolResultBlock": "server_tool_result",
}


def _plain(value: Any) -> Any:
    """JSON-safe copy of SDK dataclasses, tagging content blocks with their ``type``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        block_type = _BLOCK_TYPES.get(type(value).__name__)
        return {"type": block_type, **data} if block_type else data
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def message_event(message: Any) -> dict[str, Any]:
    """An SDK message in the shape of the CLI's stream-json output."""
    if isinstance(message, SystemMessage):
        return _plain(message.data)
    data = _plain(message)
    if isinstance(message, AssistantMessage):
        return {
            "type": "assistant",
            "message": {
                "id": data.pop("message_id", None),
                "role": "assistant",
                "model": data.pop("model", None),
                "content": data.pop("content"),
                "stop_reason": data.pop("stop_reason", None),
                "usage": data.pop("usage", None),
            },
            **data,
        }
    if isinstance(message, UserMessage):
        return {"type": "user", "message": {"role": "user", "content": data.pop("content")}, **data}
    if isinstance(message, ResultMessage):
        return {"type": "result", **data}
    if isinstance(message, StreamEvent):
        return {"type": "stream_event", **data}
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(message).__name__).lower().removesuffix("_message")
    return {"type": name, **(data if isinstance(data, dict) else {"value": data})}


def init_paths_hidden(event: dict[str, Any], *, cwd: Path, private: Sequence[Path]) -> dict[str, Any]:
    """The CLI's ``system``/``init`` event without the server's absolute paths.

    Paths inside the working directory become relative (``.``, ``./out``);
    other paths under the service's own folders (``JOBS_ROOT``, the CLI home,
    the installation) are left out. A directory the caller named itself (a
    Process API ``workingDirectory``) is theirs to see.
    """
    cwd_text = str(cwd)
    roots = [str(p) for p in private if str(p) not in ("", "/")]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            if value == cwd_text or value.startswith(cwd_text + "/"):
                return "." + value[len(cwd_text) :]
            if any(value == r or value.startswith(r + "/") for r in roots):
                return None
            return value
        if isinstance(value, dict):
            kept = {k: clean(v) for k, v in value.items()}
            return {k: v for k, v in kept.items() if v is not None or value[k] is None}
        if isinstance(value, list):
            return [c for c in (clean(v) for v in value) if c is not None]
        return value

    return clean(event)


# -- running a job ------------------------------------------------------------------------


def job_prompt(job: Job, attachments: Sequence[PlacedAttachment] = ()) -> str:
    """The user turn the CLI receives: the caller's prompt, then the files it was given and where."""
    if not attachments:
        return job.prompt
    listing = "\n".join(f"- {a.path} ({a.content_type}, {human_size(a.size)})" for a in attachments)
    return (
        f"{job.prompt}\n\n"
        f"The user attached {len(attachments)} file(s), in {attachments[0].path.parent}. "
        f"Open them with the Read tool (it reads images and PDFs too):\n{listing}"
    )


def job_cwd(job: Job, paths: JobPaths) -> Path:
    """Where the CLI runs: the job's own work folder, or a directory a family
    chose (the Process API's ``workingDirectory``, checked against
    PROCESS_ALLOWED_WORKDIRS before the job was created; a compat session's folder)."""
    cwd = (job.options or {}).get("cwd")
    return Path(cwd) if cwd else paths.work


def timeout_limit(job: Job) -> float:
    """Seconds the job may run: ``options["timeout_ms"]`` when a family asked
    for sub-second precision, else ``timeout_seconds``."""
    ms = (job.options or {}).get("timeout_ms")
    return ms / 1000 if ms else float(job.timeout_seconds)


def service_instructions(job: Job, paths: JobPaths) -> str:
    lines = [f"Your working directory is {job_cwd(job, paths)}."]
    if job.tool_policy != "read_only":
        # Always the job's own output folder, also when the CLI runs elsewhere
        # (a process's workingDirectory, a compat session's folder): what lands
        # there becomes this job's downloads.
        where = f" (./{OUTPUT_DIR_NAME}/)" if job_cwd(job, paths) == paths.work else ""
        lines.append(
            f"Write every file you produce for the user into {paths.output}{where}; "
            "files there are returned to the user."
        )
    return "\n".join(lines)


def cli_home(job: Job, paths: JobPaths) -> Path:
    """The CLI's home: the job's own, or the one all turns of its compat session share."""
    if job.session_id is not None:
        return home_prepare(session_home(job.session_id))
    return paths.home


# Variables the launcher passes on besides CLAUDE_ENV_ALLOW: they are set here, never inherited.
_RUNNER_ENV = [
    "HOME",
    "CLAUDE_CONFIG_DIR",
    "TMPDIR",
    "GIT_CEILING_DIRECTORIES",
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY",
    "API_TIMEOUT_MS",
]


def build_options(job: Job, paths: JobPaths, *, stderr_sink) -> ClaudeAgentOptions:
    cli = real_cli_path() or "claude"
    home = cli_home(job, paths)
    cwd = job_cwd(job, paths)
    read_only = [cwd] if cwd == paths.work else [cwd, paths.work]
    env = {
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(config_dir(home)),
        "TMPDIR": str(paths.tmp),
        # Auto-memory would keep notes per git root and feed them to every later
        # job there as instructions: off. Git discovery stops at JOBS_ROOT, so a
        # job folder never shows the service's own repository to the CLI.
        "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
        "GIT_CEILING_DIRECTORIES": str(Path(settings.JOBS_ROOT).resolve()),
        "CLAUDESVC_REAL_CLI": cli,
        "CLAUDESVC_PIDFILE": str(paths.pidfile),
        "CLAUDESVC_ENV_ALLOW": json.dumps([*settings.CLAUDE_ENV_ALLOW, *_RUNNER_ENV]),
        "CLAUDESVC_LIMITS": cli_limits().as_json(),
        "CLAUDESVC_SANDBOX": json.dumps(
            sandbox_argv(cli=cli, cwd=cwd, read_only=read_only, writable=[paths.output])
        ),
        # A dead upstream fails the job in seconds, not after ten retries (issue 10).
        "CLAUDE_CODE_MAX_RETRIES": str(settings.CLAUDE_API_MAX_RETRIES),
        "API_TIMEOUT_MS": str(settings.CLAUDE_API_TIMEOUT_MS),
    }
    if cwd.resolve().is_relative_to(Path(settings.JOBS_ROOT).resolve()):
        # The CLI looks for a git root itself (GIT_CEILING_DIRECTORIES does not
        # stop it) and would send that repository's status and log upstream;
        # a folder of the service's own holds no repository of the caller's.
        # (A Process API workingDirectory keeps its git context.)
        env["CLAUDE_CODE_DISABLE_GIT_INSTRUCTIONS"] = "1"
    opts = job.options or {}
    if opts.get("max_tokens"):
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(int(opts["max_tokens"]))
    appended = service_instructions(job, paths)
    if job.system_prompt:
        appended = f"{job.system_prompt}\n\n{appended}"
    policy = dict(TOOL_POLICIES.get(job.tool_policy, TOOL_POLICIES["safe"]))
    if cwd != paths.work:
        # In a directory the request named, "./out/**" would be the operator's
        # folder: writes stay in the job's own output folder ("//" marks an
        # absolute path in a permission rule), reads in the named directory.
        if policy.get("allowed_tools"):
            policy["allowed_tools"] = [f"Edit(/{paths.output}/**)"]
        if job.tool_policy != "read_only":
            policy["add_dirs"] = [str(paths.output)]
    return ClaudeAgentOptions(
        cli_path=str(LAUNCHER),
        cwd=str(cwd),
        model=job.model,
        env=env,
        system_prompt={"type": "preset", "preset": "claude_code", "append": appended},
        setting_sources=[],
        include_partial_messages=bool(opts.get("partial_messages")),
        resume=opts.get("resume") or None,
        output_format={"type": "json_schema", "schema": opts["json_schema"]}
        if opts.get("json_schema")
        else None,
        # The key's remaining budget when the job was claimed (jobs.usage); None: no budget.
        max_budget_usd=job.max_budget_usd,
        stderr=stderr_sink,
        **policy,
    )


@dataclass
class _Measure:
    """Peak memory and CPU time of the CLI's process tree, sampled while it runs."""

    peak_rss: int = 0
    rss: int = 0
    processes: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def sample(self, root_pid: int) -> None:
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu_by_pid[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.rss, self.processes = rss, len(procs)
        self.peak_rss = max(self.peak_rss, rss)

    @property
    def cpu_ms(self) -> int:
        return int(sum(self.cpu_by_pid.values()) * 1000)


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for
    (their own waited-for children included). A worker runs one job at a time,
    so the difference across a job is exactly its CLI's tree, including the
    part after the last sample and short-lived children the sampler missed."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_LIMIT_SETTINGS = {
    "memory": ("CLAUDE_MEMORY_LIMIT_MB", lambda: f"{settings.CLAUDE_MEMORY_LIMIT_MB} MB"),
    "cpu": ("CLAUDE_CPU_LIMIT_SECONDS", lambda: f"{settings.CLAUDE_CPU_LIMIT_SECONDS} s of CPU time"),
    "processes": ("CLAUDE_PROCESS_LIMIT", lambda: f"{settings.CLAUDE_PROCESS_LIMIT} processes"),
    "open_files": ("CLAUDE_OPEN_FILES_LIMIT", lambda: f"{settings.CLAUDE_OPEN_FILES_LIMIT} open files"),
}


def limit_message(limit: str, seen: int | None = None) -> str:
    """What a job that hit one of the CLI's limits reports: the limit, its value and setting."""
    setting, value = _LIMIT_SETTINGS[limit]
    what = {"memory": "memory limit", "cpu": "CPU time limit", "processes": "process limit"}.get(
        limit, "open files limit"
    )
    detail = ""
    if seen is not None:
        detail = f" (it used {human_size(seen)})" if limit == "memory" else f" (it had {seen})"
    return f"The Claude CLI hit its {what} of {value()}{detail} and was stopped ({setting})."


# How a CLI that hit an rlimit ends: Bun aborts when an allocation fails
# (RLIMIT_DATA), the kernel sends SIGXCPU and then SIGKILL at RLIMIT_CPU, and
# "Too many open files" is EMFILE (RLIMIT_NOFILE). Under bubblewrap a signal
# death reads as 128 + the signal number.
_ABORT = {-signal.SIGABRT, 128 + signal.SIGABRT, -signal.SIGSEGV, 128 + signal.SIGSEGV}
_CPU = {-signal.SIGXCPU, 128 + signal.SIGXCPU}
_KILLED = {-signal.SIGKILL, 128 + signal.SIGKILL}


def rlimit_hit(exit_code: int, stderr: str, *, cpu_ms: int) -> str:
    """The limit message if the CLI's end looks like one of its rlimits, else empty."""
    low = stderr.lower()
    if exit_code in _CPU or (exit_code in _KILLED and cpu_ms >= settings.CLAUDE_CPU_LIMIT_SECONDS * 1000):
        return limit_message("cpu")
    if exit_code in _ABORT or "out of memory" in low or "bun has crashed" in low:
        return limit_message("memory")
    if "emfile" in low or "too many open files" in low:
        return limit_message("open_files")
    return ""


class JobRun:
    """One execution of one claimed (running) job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.paths = workspace_prepare(job.pk)
        self.progress = JobProgress(job.pk, start_seq=job.events.count())
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
        self.measure = _Measure()
        self.pid: int | None = None
        self.stop_reason: str | None = None  # "timeout" | "cancelled" | "deleted" | "limit" | "shutdown"
        self.limit_message = ""
        # Whether the model said anything yet (any event but the CLI's own "system" ones).
        self.model_answered = False
        self.result: ResultMessage | None = None
        self.session_id: str = ""
        self.error: BaseException | None = None
        self.executed_via = "cli"
        self.fallback_reason = ""
        self.timeout = timeout_limit(job)
        self.started = time.monotonic()
        self.children_cpu_at_start = children_cpu_seconds()
        self.prompt = job.prompt
        self._consumer: asyncio.Task | None = None
        # -- live sessions hook (jobs/live.py): set by live.relay_turn --
        self.live: dict[str, Any] | None = None  # pid, reused, turn of the live CLI that ran it
        self.live_kept = False  # its CLI stays alive for the session's next turn: do not kill it
        # -- end hook

    # The main loop --------------------------------------------------------------

    async def run(self) -> None:
        self.paths.pidfile.unlink(missing_ok=True)
        if settings.JOB_KEEP_WORKDIR_SECONDS:
            await sync_to_async(workspace_sweep)()
        try:
            placed = await sync_to_async(attachments_place)(job_id=self.job.pk, folder=self.paths.attachments)
        except AttachmentUnavailable as exc:
            self.error = exc
            await self._finish()
            return
        self.prompt = job_prompt(self.job, placed)
        self._consumer = asyncio.create_task(self._consume())
        watcher = asyncio.create_task(self._watch())
        try:
            await self._consumer
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
        except JobGone:
            self.stop_reason = "deleted"
        except Exception as exc:
            self.error = exc
        finally:
            watcher.cancel()
            # Whatever the CLI left running in its group (a background shell …) goes too.
            if not self.live_kept:  # live sessions hook: a kept live CLI serves the next turn
                self._signal_group(signal.SIGKILL)
        # Let the killed processes be reaped before the job counts as over (and its loop closes).
        deadline = time.monotonic() + 5
        while not self.live_kept and self._group_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._finish()

    async def _consume(self) -> None:
        may_fall_back = bool((self.job.options or {}).get("api_fallback")) and fallback.fallback_available()
        if may_fall_back:
            cli = await sync_to_async(cli_info)()
            if not cli.installed:
                await self._consume_api(cli.error or "the Claude CLI is not installed")
                return
        # -- live sessions hook (jobs/live.py): a compat session's turn runs on its live CLI
        if live.serves(self.job):
            await live.relay_turn(self)
            return
        # -- end hook
        first_seq = self.progress.next_seq
        options = build_options(self.job, self.paths, stderr_sink=self.stderr_lines.append)
        # The conversation is mirrored to (and resumed from) the database: any host can run the next turn.
        options = session_store_options(self.job, options)
        try:
            await self._relay(claude_agent_sdk.query(prompt=self.prompt, options=options))
        except (CLIConnectionError, ProcessError) as exc:
            if not (may_fall_back and self.progress.next_seq == first_seq and self._cli_did_not_start(exc)):
                raise
            await self._consume_api(f"the Claude CLI could not start: {self._launch_error() or exc}")

    async def _relay(self, messages) -> None:
        async for message in messages:
            event = message_event(message)
            if isinstance(message, SystemMessage) and message.subtype == "init":
                self.session_id = message.data.get("session_id", "")
                event = init_paths_hidden(
                    event, cwd=job_cwd(self.job, self.paths), private=self._private_roots()
                )
            if isinstance(message, ResultMessage):
                self.result = message
            if event.get("type") != "system":
                self.model_answered = True
            await self.progress.aemit(event.get("type", "message"), event)

    def _private_roots(self) -> list[Path]:
        cli = real_cli_path()
        return [
            Path(settings.JOBS_ROOT),
            Path(settings.CLAUDE_HOME),
            Path(settings.BASE_DIR),
            *([Path(cli).parent] if cli else []),
        ]

    def _launch_error(self) -> str:
        return next((line.strip() for line in self.stderr_lines if "cli_launcher: cannot start" in line), "")

    def _cli_did_not_start(self, exc: BaseException) -> bool:
        # The launcher exits 127 when it cannot exec the CLI; the SDK raises
        # CLINotFoundError (a CLIConnectionError) when it cannot spawn at all.
        if isinstance(exc, CLIConnectionError):
            return True
        return bool(self._launch_error()) or getattr(exc, "exit_code", None) in (126, 127)

    async def _consume_api(self, reason: str) -> None:
        logger.warning("job %s: %s; running it through the Anthropic Messages API", self.job.pk, reason)
        self.executed_via = fallback.EXECUTED_VIA_API
        self.fallback_reason = reason
        self.stderr_lines.clear()
        await self._relay(fallback.query_api(self.job, prompt=self.prompt))

    # Watching ---------------------------------------------------------------------

    async def _watch(self) -> None:
        next_control = 0.0
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            if self.pid is None:
                self._read_pid()
            if self.pid is not None:
                self.measure.sample(self.pid)
                if self._tree_limit_hit():
                    await self._stop("limit")
                    return
            now = time.monotonic()
            if now - self.started > self.timeout:
                await self._stop("timeout")
                return
            if worker.shutdown_grace_over():
                await self._stop("shutdown")
                return
            if now >= next_control:
                next_control = now + _CONTROL_INTERVAL
                beat = now - last_beat >= settings.JOB_HEARTBEAT_SECONDS
                if beat:
                    last_beat = now
                reason = await sync_to_async(self._control)(beat)
                if reason:
                    await self._stop(reason)
                    return

    def _tree_limit_hit(self) -> bool:
        """The CLI's process tree passed its memory, process or CPU limit
        (rlimits bound each process; these bound the whole tree)."""
        limits = cli_limits()
        # The sandbox adds two small bwrap processes to the tree.
        if self.measure.processes > limits.processes + 2:
            self.limit_message = limit_message("processes", self.measure.processes)
        elif self.measure.rss > limits.memory_bytes:
            self.limit_message = limit_message("memory", self.measure.rss)
        elif self.measure.cpu_ms > limits.cpu_seconds * 1000:
            self.limit_message = limit_message("cpu")
        return bool(self.limit_message)

    def _read_pid(self) -> None:
        try:
            self.pid = int(self.paths.pidfile.read_text())
        except (OSError, ValueError):
            return
        worker.cli_started(self.pid)
        logger.info("job %s: CLI started with pid %s", self.job.pk, self.pid)

    def _control(self, beat: bool) -> str | None:
        row = Job.objects.filter(pk=self.job.pk).values("cancel_requested_at", "cli_pid").first()
        if row is None:
            return "deleted"
        if self.pid is not None and row["cli_pid"] != self.pid:
            Job.objects.filter(pk=self.job.pk).update(cli_pid=self.pid)
        if row["cancel_requested_at"]:
            return "cancelled"
        if beat:
            Job.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
        return None

    async def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        logger.info("job %s: stopping the CLI (%s)", self.job.pk, reason)
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + settings.JOB_KILL_GRACE_SECONDS
        while time.monotonic() < deadline and self._group_alive():
            await asyncio.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        # The SDK notices the CLI's end by itself; give it a moment, no more
        # (a graceful stop has JOB_KILL_GRACE_SECONDS + 5 s for all of this).
        deadline = time.monotonic() + 1
        while self._consumer and not self._consumer.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._consumer and not self._consumer.done():
            self._consumer.cancel()

    def _group_alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except OSError:
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pid is None:
            self._read_pid()
        if self.pid is None:
            return
        try:
            # The launcher made the CLI a session leader: its pid is its group id.
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            logger.warning("job %s: not allowed to signal process group %s", self.job.pk, self.pid)

    # Finishing --------------------------------------------------------------------

    def _outcome(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "stderr": "".join(line if line.endswith("\n") else line + "\n" for line in self.stderr_lines)[
                -20000:
            ],
            "duration_ms": int((time.monotonic() - self.started) * 1000),
            "claude_session_id": self.session_id,
            "peak_memory_bytes": self.measure.peak_rss or None,
            "cpu_time_ms": self._cpu_ms(),
        }
        if self.executed_via != "cli":
            fields["options"] = {**(self.job.options or {}), "executed_via": self.executed_via}
            note = (
                f"Claude CLI unavailable ({self.fallback_reason}); ran through the Anthropic Messages API.\n"
            )
            fields["stderr"] = note + fields["stderr"]
        fields.update(live.outcome_fields(self, fields))  # live sessions hook: which live CLI ran it
        res = self.result
        if res is not None:
            fields.update(
                usage=res.usage,
                cost_usd=res.total_cost_usd,
                num_turns=res.num_turns,
                claude_session_id=res.session_id or self.session_id,
                result=res.result or "",
                upstream_status=upstream_status_of(res),
            )
        if self.stop_reason == "timeout":
            return {
                **fields,
                "status": JobStatus.TIMEOUT,
                "exit_code": -signal.SIGTERM,
                "error_message": f"The job exceeded its timeout of {self.timeout:g} s and was stopped.",
            }
        if self.stop_reason == "cancelled":
            return {
                **fields,
                "status": JobStatus.CANCELLED,
                "exit_code": -signal.SIGTERM,
                "error_message": "Cancelled by the caller",
            }
        if self.stop_reason == "shutdown" and res is None:
            if not self.model_answered:
                # Nothing of it was seen: it runs again from the start on the next worker.
                return {**fields, "status": JobStatus.PENDING}
            return {
                **fields,
                "status": JobStatus.FAILED,
                "exit_code": -signal.SIGTERM,
                "error_message": worker.shutdown_message(),
            }
        if res is not None and not res.is_error:
            return {**fields, "status": JobStatus.COMPLETED, "exit_code": 0}
        return {
            **fields,
            "status": JobStatus.FAILED,
            "exit_code": self._exit_code(),
            "error_message": self._error_text(),
        }

    def _cpu_ms(self) -> int | None:
        sampled = self.measure.cpu_ms if self.measure.cpu_by_pid else None
        if self.pid is None:
            return sampled
        waited = int((children_cpu_seconds() - self.children_cpu_at_start) * 1000)
        # The rusage figure covers the whole tree once the CLI was waited for;
        # if it was not (yet), the samples are the better figure.
        return max(waited, sampled or 0) or sampled

    def _exit_code(self) -> int:
        if isinstance(self.error, ProcessError) and self.error.exit_code is not None:
            return self.error.exit_code
        return 1

    def _error_text(self) -> str:
        if self.limit_message:
            return self.limit_message
        hit = rlimit_hit(self._exit_code(), "".join(self.stderr_lines), cpu_ms=self._cpu_ms() or 0)
        if hit:
            return hit
        res = self.result
        if res is not None and res.subtype == "error_max_budget_usd":
            return f"budget_exceeded: the job reached its spending cap of ${self.job.max_budget_usd:.4f}, what was left of its key's budget; it was stopped"
        if res is not None:
            parts = [res.result or "", *(res.errors or [])]
            detail = "; ".join(p for p in parts if p) or res.subtype
            status = f" (upstream HTTP {res.api_error_status})" if res.api_error_status else ""
            return f"Claude Code reported an error{status}: {detail}"
        if isinstance(self.error, AttachmentUnavailable):
            return f"The job could not start: {self.error}"
        stderr_tail = "".join(self.stderr_lines).strip()[-2000:]
        base = (
            f"The Claude CLI failed: {self.error}" if self.error else "The Claude CLI ended without a result."
        )
        return f"{base}\n{stderr_tail}".strip() if stderr_tail and stderr_tail not in base else base

    async def _finish(self) -> None:
        if self.stop_reason == "deleted":
            logger.info("job %s was deleted while running; CLI stopped", self.job.pk)
            await sync_to_async(workspace_remove)(self.job.pk)
            return
        outcome = self._outcome()
        status = outcome.pop("status")
        if status == JobStatus.PENDING:
            # It starts over from a clean folder wherever it runs next.
            await sync_to_async(workspace_remove)(self.job.pk)
            await sync_to_async(job_requeue)(
                job_id=self.job.pk, reason="worker shut down before the model answered"
            )
            return
        # Before the final status, so a client that sees the job finished also sees its files.
        await sync_to_async(self._collect_artifacts)()
        await sync_to_async(workspace_finished)(self.job.pk)
        if status != JobStatus.COMPLETED and self.result is None:
            try:
                await self.progress.aemit(
                    "error", {"type": "error", "error": status, "message": outcome["error_message"]}
                )
            except JobGone:
                return
        moved = await sync_to_async(job_transition)(
            job_id=self.job.pk, frm=JobStatus.RUNNING, to=status, **outcome
        )
        logger.info(
            "job %s finished: %s in %s ms%s",
            self.job.pk,
            status,
            outcome["duration_ms"],
            "" if moved else " (status was changed elsewhere; result not recorded)",
        )

    def _collect_artifacts(self) -> None:
        try:
            artifacts_collect(job_id=self.job.pk)
        except NotFound:
            return  # deleted meanwhile; the delete removes everything
        except Exception:
            # The job's own outcome still gets recorded; its files are what is missing.
            logger.exception("job %s: collecting its output files failed", self.job.pk)


def run_job(job_id) -> None:
    """Run a job that ``services.job_claim_next`` moved to running. Blocks until it ends."""
    job_run = JobRun(Job.objects.get(pk=job_id))

    async def main() -> None:
        try:
            await job_run.run()
        finally:
            # ORM calls ran on sync_to_async's executor thread; do not keep its
            # connection open between jobs.
            await sync_to_async(connections.close_all)()

    if live.serves(job_run.job):
        # live sessions hook: on the process's persistent loop, where a live CLI outlives its turn.
        live_loop.run(main())
    else:
        asyncio.run(main())
