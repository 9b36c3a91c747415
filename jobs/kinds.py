"""Job kinds plug into the core: each registers how its jobs run and what
deleting one must clean up.

The core (``jobs.tasks``, ``jobs.services``) dispatches through this registry
and never imports the apps that provide kinds; an app registers its kind in its
``AppConfig.ready()`` (``jobs.apps`` for ``claude``, ``transcription.apps`` for
``transcription``). Adding a kind needs no change to ``jobs/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JobKindSpec:
    name: str
    # Runs a claimed (running) job to its end; blocks.
    execute: Callable[[uuid.UUID], None]
    # Before a job's row is deleted: what of it lives outside the job core (files, child jobs).
    cleanup: Callable[[uuid.UUID], None] | None = None


_KINDS: dict[str, JobKindSpec] = {}


def job_kind_register(name: str, *, execute: Callable[[uuid.UUID], None], cleanup=None) -> None:
    _KINDS[name] = JobKindSpec(name=name, execute=execute, cleanup=cleanup)


def job_kind(name: str) -> JobKindSpec:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(
            f"no job kind {name!r} is registered (known: {', '.join(sorted(_KINDS))})"
        ) from None
