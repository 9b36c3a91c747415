"""Service metrics over the job core: outcomes, load and duration statistics.

Every job counts (jobs, compat calls and processes all run the CLI on the same
workers); durations are the runner's measured ``duration_ms``. Percentiles
are real ones over the period's durations (``statistics.quantiles``, the
inclusive method: linear interpolation between the closest ranks).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from jobs.models import Job, JobStatus


@dataclass(frozen=True)
class DurationStats:
    avg: int | None
    min: int | None
    max: int | None
    p95: int | None
    p99: int | None


def duration_stats(durations: list[int]) -> DurationStats:
    if not durations:
        return DurationStats(None, None, None, None, None)
    if len(durations) == 1:
        (only,) = durations
        return DurationStats(only, only, only, only, only)
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return DurationStats(
        avg=round(statistics.fmean(durations)),
        min=min(durations),
        max=max(durations),
        p95=round(cuts[94]),
        p99=round(cuts[98]),
    )


@dataclass(frozen=True)
class ServiceMetrics:
    total: int
    successful: int
    failed: int
    timed_out: int
    cancelled: int
    active: int
    queued: int
    durations: DurationStats
    success_rate: float | None
    period_seconds: int
    timestamp: datetime


def caller_is_staff(caller) -> bool:
    """A JWT caller whose Django user is staff, or a key owned by one: may see service-wide figures."""
    from django.contrib.auth import get_user_model

    if getattr(caller, "api_key", None) is not None:
        owner = caller.api_key.owner
        return bool(owner and owner.is_staff and owner.is_active)
    user_id = getattr(caller, "user_id", None)
    return (
        bool(user_id) and get_user_model().objects.filter(pk=user_id, is_staff=True, is_active=True).exists()
    )


def service_metrics(
    *, period_seconds: int, now: datetime | None = None, scope: Q | None = None
) -> ServiceMetrics:
    """Jobs that ended within the last ``period_seconds``, and the load right now.

    ``scope`` limits every figure to some jobs (a caller's own: ``caller.owns()``);
    None counts the whole service, which only staff may see.
    """
    now = now or timezone.now()
    jobs = Job.objects.filter(scope) if scope is not None else Job.objects.all()
    ended = jobs.filter(finished_at__gte=now - timedelta(seconds=period_seconds), finished_at__lte=now)
    counts = ended.aggregate(
        total=Count("pk"),
        completed=Count("pk", filter=Q(status=JobStatus.COMPLETED)),
        failed=Count("pk", filter=Q(status=JobStatus.FAILED)),
        timeout=Count("pk", filter=Q(status=JobStatus.TIMEOUT)),
        cancelled=Count("pk", filter=Q(status=JobStatus.CANCELLED)),
    )
    load = jobs.aggregate(
        running=Count("pk", filter=Q(status=JobStatus.RUNNING)),
        pending=Count("pk", filter=Q(status=JobStatus.PENDING)),
    )
    durations = list(ended.filter(duration_ms__isnull=False).values_list("duration_ms", flat=True))
    total = counts["total"]
    return ServiceMetrics(
        total=total,
        successful=counts["completed"],
        failed=counts["failed"],
        timed_out=counts["timeout"],
        cancelled=counts["cancelled"],
        active=load["running"],
        queued=load["pending"],
        durations=duration_stats(durations),
        success_rate=round(counts["completed"] / total, 4) if total else None,
        period_seconds=period_seconds,
        timestamp=now,
    )
