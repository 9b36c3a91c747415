#!/usr/bin/env python3
"""Starts the real ``claude`` binary for the runner, in a process group of its
own and with an allow-listed environment.

claude-agent-sdk spawns its CLI with the whole parent environment and in the
parent's process group. The runner points the SDK at this file instead; it
keeps only the variables matching ``CLAUDESVC_ENV_ALLOW``, becomes a session
leader (so the runner can kill the CLI's whole process tree by group), writes
its pid to ``CLAUDESVC_PIDFILE`` and execs ``CLAUDESVC_REAL_CLI`` with the same
arguments. On Linux it also asks the kernel to SIGTERM the CLI when the worker
that started it dies, so a killed worker leaves no CLI running on its own.
Standard library only: it runs before anything else is imported.
"""

import ctypes
import fnmatch
import json
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


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
    os.setsid()
    _die_with_parent()
    if pidfile:
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(tmp, pidfile)
    try:
        os.execve(real_cli, [real_cli, *sys.argv[1:]], env)
    except OSError as exc:
        sys.stderr.write(f"cli_launcher: cannot start {real_cli}: {exc}\n")
        sys.exit(127)


if __name__ == "__main__":
    main()
