"""Writes of the Process API: a process is a job with ``source="process"``.

Process ids read ``claude_<the job's UUID as 32 hex digits>``; the mapping is
stable both ways and only that exact form is accepted.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

from django.conf import settings

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, ServiceError
from jobs.models import ACTIVE_STATUSES, Job, JobStatus
from jobs.services import job_cancel, job_create

PROCESS_SOURCE = "process"
_PROCESS_ID = re.compile(r"^claude_([0-9a-f]{32})$")
ALREADY_COMPLETED = "PROCESS_ALREADY_COMPLETED"


def process_id(job: Job | uuid.UUID) -> str:
    job_uuid = job.pk if isinstance(job, Job) else job
    return f"claude_{job_uuid.hex}"


def process_uuid(value: str) -> uuid.UUID | None:
    match = _PROCESS_ID.match(value or "") if isinstance(value, str) else None
    return uuid.UUID(match.group(1)) if match else None


def process_status(job: Job) -> str:
    """Seed 002's status: the core's, except that a pending process that was
    answered 202 "queued" reads ``queued`` until it starts."""
    if job.status == JobStatus.PENDING and (job.options or {}).get("queued"):
        return "queued"
    return job.status


def workdir_resolve(path: str) -> Path:
    """The real directory a process may run in, or a ServiceError naming ``workingDirectory``.

    It must lie inside one of PROCESS_ALLOWED_WORKDIRS once every symlink is
    resolved; ``..`` is refused outright, even where it would stay inside.
    """
    field = "workingDirectory"
    allowed = [Path(os.path.realpath(root)) for root in settings.PROCESS_ALLOWED_WORKDIRS]
    if not allowed:
        raise ServiceError("workingDirectory is not enabled on this service", field=field)
    if "\x00" in path:
        raise ServiceError("workingDirectory contains a NUL character", field=field)
    candidate = Path(path)
    if not candidate.is_absolute():
        raise ServiceError("workingDirectory must be an absolute path", field=field)
    if ".." in candidate.parts:
        raise ServiceError("workingDirectory must not contain '..'", field=field)
    real = Path(os.path.realpath(candidate))
    if not any(real == root or real.is_relative_to(root) for root in allowed):
        raise ServiceError("workingDirectory is outside the directories this service allows", field=field)
    if not real.is_dir():
        raise ServiceError("workingDirectory does not exist or is not a directory", field=field)
    return real


def slots_busy() -> bool:
    """Every execution slot is taken: as many jobs run or wait as there are slots."""
    return Job.objects.filter(status__in=ACTIVE_STATUSES).count() >= settings.MAX_CONCURRENT_PROCESSES


def process_create(
    *,
    caller: Caller,
    prompt: str,
    system_prompt: str = "",
    model: str | None = None,
    max_tokens: int | None = None,
    working_directory: Path | None = None,
    timeout_ms: int | None = None,
    priority: int = 0,
    queued: bool = False,
    stream: bool = False,
) -> Job:
    """Create a process. ``queued`` records that the caller was told 202 "queued";
    ``stream`` asks the runner for partial messages (text as it is generated)."""
    options: dict = {"api_fallback": True, "queued": queued}
    if stream:
        options["partial_messages"] = True
    if max_tokens:
        options["max_tokens"] = max_tokens
    if working_directory:
        options["cwd"] = str(working_directory)
    if timeout_ms:
        # The core counts whole seconds; the runner honours the milliseconds.
        options["timeout_ms"] = timeout_ms
    return job_create(
        caller=caller,
        prompt=prompt,
        model=model,
        source=PROCESS_SOURCE,
        system_prompt=system_prompt,
        priority=priority,
        timeout_seconds=math.ceil(timeout_ms / 1000) if timeout_ms else None,
        options=options,
    )


def process_cancel(*, job: Job) -> Job:
    if job.is_final:
        raise ServiceError("Process already completed", code=ALREADY_COMPLETED)
    try:
        return job_cancel(job=job)
    except Conflict:  # it ended a moment ago
        raise ServiceError("Process already completed", code=ALREADY_COMPLETED) from None
