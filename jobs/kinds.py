"""Job kinds plug into the core: each registers how its jobs run, what their
options may hold, what deleting one must clean up and how the Jobs API shows
its details.

The core (``jobs.tasks``, ``jobs.services``, the API families) dispatches
through this registry and never imports the apps that provide kinds; an app
registers its kind in its ``AppConfig.ready()`` (``jobs.apps`` for ``claude``,
``transcription.apps`` for ``transcription``). Adding a kind needs no change
to ``jobs/`` (docs/ARCHITECTURE.md, tests/jobs/test_kinds.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobKindSpec:
    name: str
    # Runs a claimed (running) job to its end; blocks.
    execute: Callable[[uuid.UUID], None]
    # Before a job's row is deleted: what of it lives outside the job core (files).
    cleanup: Callable[[uuid.UUID], None] | None = None
    # The TypedDict its ``Job.options`` must fit (jobs.options); None: not checked.
    options: type | None = None
    # The Jobs API's details of such a job (``GET /jobs/{id}`` under the kind's
    # name): a DRF serializer class rendering the job's kind-specific row, and
    # how to find that row from the job (None when it has none).
    detail_serializer: Any = None
    detail_of: Callable[[Any], Any] | None = None
    # What an ended job of the kind adds to its owner's usage row instead of its
    # tokens and cost (jobs.usage): {UsageDaily field: amount}.
    usage_figures: Callable[[Any], dict[str, float | int]] | None = None
    # The Jobs API's create input (a DRF serializer class) for ``POST /jobs`` with
    # ``type=<name>``, and the service it calls: ``create(caller=, data=validated_data) -> Job``.
    create_input: Any = None
    create: Callable[..., Any] | None = None


_KINDS: dict[str, JobKindSpec] = {}


def job_kind_register(name: str, *, execute: Callable[[uuid.UUID], None], **hooks: Any) -> None:
    _KINDS[name] = JobKindSpec(name=name, execute=execute, **hooks)


def job_kind(name: str) -> JobKindSpec:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(
            f"no job kind {name!r} is registered (known: {', '.join(sorted(_KINDS))})"
        ) from None


def job_kind_or_none(name: str) -> JobKindSpec | None:
    return _KINDS.get(name)


def job_kinds_creatable() -> list[JobKindSpec]:
    """The kinds a client can create through the Jobs API (``type=<name>``), by name."""
    return sorted((k for k in _KINDS.values() if k.create_input and k.create), key=lambda k: k.name)
