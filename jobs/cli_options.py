"""What the CLI of one job gets: its prompt, working directory, home,
environment, tool policy and the SDK options built from them.

Pure functions of the job and its folders; ``jobs.runner`` starts the CLI
with what ``build_options`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions
from django.conf import settings

from jobs import cli_launcher
from jobs.attachments import PlacedAttachment
from jobs.cli import real_cli_path
from jobs.filetypes import human_size
from jobs.models import Job
from jobs.sandbox import cli_limits, sandbox_argv
from jobs.workspace import OUTPUT_DIR_NAME, JobPaths, config_dir, home_prepare, session_home

LAUNCHER = Path(__file__).resolve().parent / "cli_launcher.py"

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
        # The launcher without a PATH lookup or site packages (cli_launcher.executable).
        cli_path=cli_launcher.executable(Path(settings.VAR_DIR) / "run"),
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
