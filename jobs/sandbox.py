"""The OS sandbox every Claude CLI runs in, and its resource limits.

With ``CLAUDE_SANDBOX=bwrap`` (the default wherever bubblewrap works) the
launcher (``jobs/cli_launcher.py``) starts the CLI under ``bwrap``:

- a user namespace in which it is uid/gid ``SANDBOX_UID`` (10001), not the
  service's user, with every capability dropped;
- its own mount namespace, which holds only system files read-only (``/usr``,
  the ``/lib`` links, a few files of ``/etc``), the CLI binary read-only, the
  job's working directory read-only with its ``out/`` writable, its own CLI home
  (``CLAUDE_CONFIG_DIR``) and scratch folder (``TMPDIR``, also ``/tmp``)
  writable, and, for the Process API, the named ``workingDirectory`` read-only.
  Everything else of the host (other jobs, the database, ``var/``, the
  checkout and its ``.git``) does not exist in there;
- its own PID namespace with a fresh ``/proc``: it sees no other process, so
  no other process's environment either.

Limits apply to every CLI process (rlimits set by the launcher, inherited by
its children), with or without the sandbox: memory (``RLIMIT_DATA``, which
counts the private memory a Bun/Node heap allocates, unlike ``RLIMIT_AS`` not
the 400 MB binary and file mappings), CPU seconds and open files. The
runner bounds the whole process tree as well: its resident memory, its CPU
time and the number of its processes (``RLIMIT_NPROC`` counts every process of
a user, and none of root's, so it cannot bound one CLI). A job past a limit
ends ``failed`` with a message naming it (``jobs.measure.limit_message``).

``sandbox_in_force()`` says which sandbox runs ("bwrap" or "none"), for the
health views. The choice is made once per process: ``CLAUDE_SANDBOX`` unset
tries bubblewrap and falls back to none with a loud warning; ``bwrap`` set
explicitly makes jobs fail (with the reason) if it cannot run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

SANDBOX_UID = 10001
# Files of /etc the CLI needs (DNS, TLS roots, users, time zone, the dynamic
# linker); the rest of /etc (service configuration, keys) stays outside.
ETC_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/mime.types",
)


class SandboxUnavailable(Exception):
    """CLAUDE_SANDBOX=bwrap is set but bubblewrap cannot run here."""


@dataclass(frozen=True)
class SandboxState:
    mode: str  # "bwrap" | "none"
    reason: str = ""  # why not bwrap, when it is not


def _probe_bwrap(bwrap: str) -> str:
    """Empty if a minimal sandbox starts, else why not."""
    args = [bwrap, *_namespace_args(), *_system_args(), "--", "/bin/true"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap cannot run: {exc}"
    if out.returncode != 0:
        return f"bubblewrap cannot create a sandbox here: {out.stderr.strip()[:300]}"
    return ""


@lru_cache(maxsize=1)
def _state() -> SandboxState:
    wanted = settings.CLAUDE_SANDBOX
    if wanted == "none":
        logger.warning(
            "CLAUDE_SANDBOX=none: the Claude CLI runs WITHOUT an OS sandbox, as the service's user "
            "and with its whole filesystem view; only the CLI's own tool permissions separate jobs"
        )
        return SandboxState("none", "CLAUDE_SANDBOX=none")
    bwrap = shutil.which("bwrap")
    reason = "bubblewrap (bwrap) is not installed" if bwrap is None else _probe_bwrap(bwrap)
    if not reason:
        logger.info("Claude CLI sandbox: bubblewrap (%s)", bwrap)
        return SandboxState("bwrap")
    if wanted == "bwrap":
        logger.error("CLAUDE_SANDBOX=bwrap but %s; jobs will fail", reason)
        return SandboxState("unavailable", reason)
    logger.warning(
        "%s: the Claude CLI runs WITHOUT an OS sandbox (install bubblewrap, allow user namespaces, "
        "or set CLAUDE_SANDBOX=none to silence this)",
        reason,
    )
    return SandboxState("none", reason)


def sandbox_in_force() -> str:
    """Which sandbox the CLI runs in on this host: "bwrap" or "none" (for /health)."""
    state = _state()
    return "bwrap" if state.mode == "bwrap" else "none"


def _namespace_args() -> list[str]:
    return [
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
    ]


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(link)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), link]
        elif path.is_dir():
            args += ["--ro-bind", link, link]
    for name in ETC_FILES:
        args += ["--ro-bind-try", name, name]
    # First a private /tmp (the launcher swaps in the job's TMPDIR), so that the
    # job folders bound below stay visible when they lie under /tmp.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108 - the sandbox's own
    return args


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_seconds: int
    processes: int
    open_files: int

    def as_json(self) -> str:
        return json.dumps(
            {
                "memory_bytes": self.memory_bytes,
                "cpu_seconds": self.cpu_seconds,
                "processes": self.processes,
                "open_files": self.open_files,
            }
        )


def cli_limits() -> Limits:
    return Limits(
        memory_bytes=settings.CLAUDE_MEMORY_LIMIT_MB * 1024 * 1024,
        cpu_seconds=settings.CLAUDE_CPU_LIMIT_SECONDS,
        processes=settings.CLAUDE_PROCESS_LIMIT,
        open_files=settings.CLAUDE_OPEN_FILES_LIMIT,
    )


def sandbox_argv(*, cli: str, cwd: Path, read_only: list[Path], writable: list[Path]) -> list[str]:
    """bwrap's arguments up to (not including) the CLI's own; [] when no sandbox is in force.

    Mounts are applied in order, so a writable folder inside a read-only one
    (``work/out`` inside ``work``) is listed after it. The CLI home and
    ``TMPDIR`` are added by the launcher, which knows the final
    ``CLAUDE_CONFIG_DIR`` (claude-agent-sdk may point it at a folder of its own
    when it resumes from a session store).
    """
    state = _state()
    if state.mode == "unavailable":
        raise SandboxUnavailable(f"CLAUDE_SANDBOX=bwrap is set, but {state.reason}")
    if state.mode != "bwrap":
        return []
    args = [shutil.which("bwrap") or "bwrap", *_namespace_args(), *_system_args()]
    args += ["--ro-bind", cli, cli]
    for path in read_only:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    args += ["--chdir", str(cwd)]
    return args


def group_running(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs; zombies do not count.

    bubblewrap's outer process exits as soon as the sandbox reports the CLI's
    exit status, before it reaps the sandbox's init, which is then reaped by
    whoever adopts it: ``serve`` (a subreaper, every 0.3 s) or PID 1 (seconds on
    some hosts). A ``killpg(pgid, 0)`` succeeds until then, so waiting for it
    would add that delay to every job's end.
    """
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc (not Linux): trust killpg
        return True
    for pid in pids:
        try:
            if os.getpgid(pid) != pgid:
                continue
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) S ...": the state follows the last ")" (comm may hold spaces and parentheses).
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X"):
            return True
    return False


class KeptCli:
    """A CLI process group kept alive between uses (a live session's, ``jobs.live_cli``; a
    spare, ``jobs.spares``): where its stderr goes, whether it lives, its end. The owner
    sets ``pid`` (the group's leader, as the launcher wrote it), ``closed`` and ``sink``."""

    pid: int | None
    closed: bool
    sink: Callable[[str], None] | None

    def stderr(self, line: str) -> None:
        if self.sink is not None:
            self.sink(line)

    def alive(self) -> bool:
        if self.pid is None or self.closed:
            return False
        try:
            os.killpg(self.pid, 0)
        except OSError:
            return False
        return True

    def kill_group(self) -> None:
        """Closed for good: SIGKILL to its whole process group."""
        self.closed = True
        if self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
