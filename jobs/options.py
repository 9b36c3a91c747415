"""``Job.options``: one typed structure per job kind, checked where jobs are created.

The column stays plain JSON (rows written before keep their shape); what may
go in it is declared here for the ``claude`` kind and by each other kind when
it registers (``jobs.kinds.job_kind_register(options=...)``). ``job_create``
refuses a key the kind does not declare and a value of the wrong type, so a
family cannot grow a private back door into the runner unnoticed: a new
option is a new line in its kind's type.
"""

from __future__ import annotations

import types
import typing
from typing import Any, NotRequired, TypedDict

from claudesvc.errors import ServiceError


class ClaudeOptions(TypedDict):
    """Options of a ``claude`` job (every API family writes some of these)."""

    partial_messages: NotRequired[bool]  # stream_event deltas (streaming families)
    max_tokens: NotRequired[int | None]  # CLAUDE_CODE_MAX_OUTPUT_TOKENS
    json_schema: NotRequired[dict | None]  # structured output (compat)
    end_user: NotRequired[str]  # OpenAI's ``user`` (compat)
    cwd: NotRequired[str | None]  # where the CLI runs: a session's folder, a process's workingDirectory
    inline_files: NotRequired[list]  # files of a compat conversation, written into cwd (jobs.inline_files)
    resume: NotRequired[str | None]  # the Claude Code session to resume (jobs.sessions)
    resume_prompt: NotRequired[str]  # the whole conversation, should the resume not be possible
    timeout_ms: NotRequired[int | None]  # sub-second timeout (Process API)
    api_fallback: NotRequired[bool]  # may run through the Messages API without the CLI (Process API)
    queued: NotRequired[bool]  # the caller asked to queue rather than be refused (Process API)
    executed_via: NotRequired[str]  # written by the runner: "cli" or "api"
    # Live sessions (jobs.live, jobs.live_routing, jobs.history): fingerprints of the
    # client's history (compat), whether the session was named (may keep a live CLI),
    # what the worker decided (the turn it continues, a stale history), which live CLI ran it.
    turn_fp: NotRequired[str]
    history_fp: NotRequired[str]
    live_session: NotRequired[bool]
    resume_job: NotRequired[str]
    history_stale: NotRequired[bool]
    live: NotRequired[dict]
    # Written by the runner: the job ran on a pre-started CLI (jobs.spares).
    spare_cli: NotRequired[bool]


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is NotRequired:
        return _type_ok(value, typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    cls = origin or annotation
    if cls is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if cls is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, cls) if isinstance(cls, type) else True


def options_check(options: dict[str, Any], shape: type | None) -> dict[str, Any]:
    """``options`` if it fits ``shape`` (a TypedDict); a ServiceError naming the first misfit."""
    if not isinstance(options, dict):
        raise ServiceError("options must be an object", field="options")
    if shape is None:
        return options
    hints = typing.get_type_hints(shape, include_extras=True)
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ServiceError(
            f"unknown job option(s) for this kind: {', '.join(unknown)} (known: {', '.join(sorted(hints))})",
            field="options",
        )
    for key, value in options.items():
        if not _type_ok(value, hints[key]):
            raise ServiceError(
                f"job option {key!r} has the wrong type ({type(value).__name__})", field="options"
            )
    return options


def options_validate(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` against the options type ``kind`` registered."""
    from jobs.kinds import job_kind

    return options_check(options, job_kind(kind).options)
