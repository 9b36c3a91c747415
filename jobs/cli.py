"""The Claude Code CLI binary: where it is and whether it runs (its version).

Health views read ``cli_info``; the runner uses ``real_cli_path`` to start it.
Nothing here starts a job's CLI (that is ``jobs.runner``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import claude_agent_sdk
from django.conf import settings


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
