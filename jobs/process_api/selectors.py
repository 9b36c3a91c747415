"""Reads of the Process API, scoped to the caller: another caller's process is not found."""

from __future__ import annotations

from django.db.models import QuerySet

from claudesvc.auth import Caller
from claudesvc.errors import NotFound
from jobs.models import Job, JobStatus
from jobs.process_api.services import PROCESS_SOURCE, process_uuid

PROCESS_STATUSES = ("pending", "queued", "running", "completed", "failed", "timeout", "cancelled")


def process_get(*, caller: Caller, id: str) -> Job:
    job_uuid = process_uuid(id)
    job = Job.objects.filter(caller.owns(), pk=job_uuid, source=PROCESS_SOURCE).first() if job_uuid else None
    if job is None:
        raise NotFound("Process not found")
    return job


def process_list(*, caller: Caller, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(caller.owns(), source=PROCESS_SOURCE)
    if status == "queued":
        jobs = jobs.filter(status=JobStatus.PENDING, options__queued=True)
    elif status == "pending":
        jobs = jobs.filter(status=JobStatus.PENDING, options__queued=False)
    elif status:
        jobs = jobs.filter(status=status)
    return jobs.order_by("-created_at", "-pk")
