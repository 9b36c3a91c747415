"""Reads of the job core, always scoped to the caller: another caller's job is
simply not found."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from claudesvc.auth import Caller
from claudesvc.errors import NotFound
from jobs.models import Artifact, Job, JobEvent


def _parse_id(job_id: str | uuid.UUID) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        return None


def job_get(*, caller: Caller, id: str | uuid.UUID) -> Job:
    job_uuid = _parse_id(id)
    job = Job.objects.filter(caller.owns(), pk=job_uuid).first() if job_uuid else None
    if job is None:
        raise NotFound("Job not found")
    return job


def job_list(*, caller: Caller, status: str | None = None, source: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(caller.owns())
    if status:
        jobs = jobs.filter(status=status)
    if source:
        jobs = jobs.filter(source=source)
    return jobs.order_by("-created_at")


def job_events(*, job_id: uuid.UUID, offset: int = 0, limit: int = 1000) -> list[JobEvent]:
    return list(JobEvent.objects.filter(job_id=job_id, seq__gte=offset).order_by("seq")[:limit])


def artifact_get(*, job: Job, name: str) -> Artifact:
    """A file of ``job`` by its exact name; the name is never used as a path."""
    # No stored name holds a control character (NUL would even be a database error on PostgreSQL).
    usable = len(name) <= 255 and not any(ch < " " for ch in name)
    artifact = Artifact.objects.filter(job=job, name=name).first() if usable else None
    if artifact is None:
        raise NotFound(f"The job has no file named {name!r}")
    return artifact
