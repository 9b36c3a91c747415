#!/usr/bin/env python3
"""Starts the real ``claude`` binary for the runner, in a process group of its
own, with an allow-listed environment, resource limits and (when the runner
asks for it) inside a bubblewrap sandbox.

claude-agent-sdk spawns its CLI with the whole parent environment and in the
parent's process group. The runner points the SDK at this file instead; it
keeps only the variables matching ``CLAUDESVC_ENV_ALLOW``, becomes a session
leader (so the runner can kill the CLI's whole process tree by group), writes
its pid to ``CLAUDESVC_PIDFILE`` and execs ``CLAUDESVC_REAL_CLI`` with the same
arguments. On Linux it also asks the kernel to SIGTERM the CLI when the worker
that started it dies, so a killed worker leaves no CLI running on its own.

``CLAUDESVC_LIMITS`` (JSON: memory_bytes, cpu_seconds, open_files) become
rlimits every process of the CLI inherits. ``CLAUDESVC_SANDBOX`` (JSON: the
bwrap arguments built by ``jobs/sandbox.py``) makes it exec bubblewrap with
those arguments instead, adding writable binds for the final ``HOME``,
``CLAUDE_CONFIG_DIR`` and ``TMPDIR`` (also mounted as ``/tmp``): claude-agent-sdk
may have pointed ``CLAUDE_CONFIG_DIR`` at a folder of its own.
Standard library only: it runs before anything else is imported.

The runner starts it through ``executable()``: a copy whose first line names
the worker's own interpreter with ``-I -S``, so that a job's start pays neither
a ``PATH`` lookup of ``python3`` (a pyenv shim alone costs 50-500 ms) nor the
import of the site packages.
"""

import ctypes
import fnmatch
import hashlib
import json
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1
# /tmp inside the sandbox (its own mount, never the host's /tmp).
_SANDBOX_TMP = "/tmp"  # noqa: S108


def _die_with_parent() -> None:
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the runner's own kill still applies
        return
    # The worker may have died before prctl took effect.
    if os.getppid() != parent:
        sys.exit(1)


def _apply_limits(raw: str) -> None:
    limits = json.loads(raw or "{}")
    if limits.get("memory_bytes"):
        # RLIMIT_DATA (private writable memory: the heap), not RLIMIT_AS, which
        # also counts the 400 MB CLI binary and every file mapping. Bun sizes
        # its reservations to the limit; it starts from about 768 MB up.
        resource.setrlimit(resource.RLIMIT_DATA, (limits["memory_bytes"], limits["memory_bytes"]))
    if limits.get("cpu_seconds"):
        # SIGXCPU at the soft limit, SIGKILL a few seconds later.
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 5))
    if limits.get("open_files"):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        value = limits["open_files"] if hard == resource.RLIM_INFINITY else min(limits["open_files"], hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (value, value))


def _sandboxed(argv: list[str], env: dict[str, str]) -> list[str]:
    """bwrap's arguments plus binds for the CLI's own writable folders, then ``--``."""
    args = list(argv)
    tmpdir = env.get("TMPDIR", "")
    if tmpdir and os.path.isdir(tmpdir):
        # The job's scratch folder becomes /tmp (on disk and removed with the
        # job, not in memory); jobs/sandbox.py put a "--tmpfs /tmp" where it goes.
        for i in range(len(args) - 1):
            if args[i] == "--tmpfs" and args[i + 1] == _SANDBOX_TMP:
                args[i : i + 2] = ["--bind", tmpdir, _SANDBOX_TMP]
                break
    writable: list[str] = []
    for name in ("HOME", "CLAUDE_CONFIG_DIR", "TMPDIR"):
        path = env.get(name)
        if path and os.path.isdir(path) and path not in writable:
            writable.append(path)
    for path in writable:
        args += ["--bind", path, path]
    return [*args, "--"]


_EXECUTABLES: dict[str, str] = {}


def executable(folder: str | os.PathLike, python: str | None = None) -> str:
    """This launcher as a file that starts fast (see the module's docstring),
    written once per process into ``folder``; this file itself where that
    cannot work (a ``noexec`` folder, an interpreter path too long for a ``#!``
    line)."""
    key = f"{folder}|{python}"
    if key in _EXECUTABLES:
        return _EXECUTABLES[key]
    source = os.path.abspath(__file__)
    interpreter = os.path.realpath(python or sys.executable)
    shebang = f"#!{interpreter} -IS\n"
    path = source
    if len(shebang) < 127 and os.access(interpreter, os.X_OK):
        with open(source) as fh:
            body = fh.read().split("\n", 1)[1]
        text = shebang + body
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        target = os.path.join(folder, f"cli_launcher-{digest}")
        try:
            if not os.path.exists(target):
                os.makedirs(folder, exist_ok=True)
                tmp = f"{target}.{os.getpid()}.tmp"
                with open(tmp, "w") as fh:
                    fh.write(text)
                os.chmod(tmp, 0o700)  # only the worker runs it
                os.replace(tmp, target)
            if os.access(target, os.X_OK):
                path = target
        except OSError:
            pass
    _EXECUTABLES[key] = path
    return path


def main() -> None:
    real_cli = os.environ.get("CLAUDESVC_REAL_CLI")
    if not real_cli:
        sys.stderr.write("cli_launcher: CLAUDESVC_REAL_CLI is not set\n")
        sys.exit(127)
    patterns = json.loads(os.environ.get("CLAUDESVC_ENV_ALLOW", "[]"))
    pidfile = os.environ.get("CLAUDESVC_PIDFILE")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CLAUDESVC_") and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
    sandbox = json.loads(os.environ.get("CLAUDESVC_SANDBOX") or "[]")
    limits = os.environ.get("CLAUDESVC_LIMITS", "")
    os.setsid()
    _die_with_parent()
    if pidfile:
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(tmp, pidfile)
    try:
        _apply_limits(limits)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"cli_launcher: cannot set the resource limits: {exc}\n")
        sys.exit(126)
    command = [real_cli, *sys.argv[1:]]
    if not os.access(real_cli, os.X_OK):
        # Said here, not by bwrap: the runner recognises this line (API fallback).
        sys.stderr.write(f"cli_launcher: cannot start {real_cli}: not an executable file\n")
        sys.exit(127)
    if sandbox:
        command = [*_sandboxed(sandbox, env), *command]
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        sys.stderr.write(f"cli_launcher: cannot start {command[0]}: {exc}\n")
        sys.exit(127)


if __name__ == "__main__":
    main()
