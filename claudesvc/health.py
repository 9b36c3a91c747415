"""Whether the service can run jobs: the checks behind ``/health`` and the
Process API's health.

Jobs run when the database answers (it is the queue), the broker answers
(it wakes the workers) and at least one worker process has sent a heartbeat
recently (``jobs.worker`` writes one every ``JOB_HEARTBEAT_SECONDS``). Nothing
here names a host, a path or a process: the answers go to callers without a key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psutil
from django.conf import settings
from django.db import connection
from django.utils import timezone

logger = logging.getLogger(__name__)

# When this process started (not when this module was imported).
STARTED = psutil.Process().create_time()

_broker = None


@dataclass
class Health:
    ok: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {check['error']}" for name, check in self.checks.items() if not check["ok"]]


class CheckFailed(Exception):
    """A check that found a problem, with the figures it found."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.data = data


def _timed(check) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = {"ok": True, **(check() or {})}
    except CheckFailed as exc:
        result = {"ok": False, "error": str(exc), **exc.data}
    except Exception as exc:
        logger.warning("health check %s failed: %s", check.__name__, exc)
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    result["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"engine": connection.vendor}


def _broker_check() -> dict[str, Any]:
    global _broker
    from django_q.brokers import get_broker

    if _broker is None:
        _broker = get_broker()
    try:
        _broker.ping()
    except Exception:
        _broker = None  # a fresh connection next time
        raise
    return {"kind": "redis" if settings.REDIS_URL else "orm"}


def _workers() -> dict[str, Any]:
    from jobs.models import Worker

    now = timezone.now()
    live_after = now - timedelta(seconds=3 * settings.JOB_HEARTBEAT_SECONDS)
    live = Worker.objects.filter(heartbeat_at__gte=live_after)
    newest = Worker.objects.order_by("-heartbeat_at").values_list("heartbeat_at", flat=True).first()
    age = round((now - newest).total_seconds(), 1) if newest else None
    data = {
        "live": live.count(),
        "busy": live.filter(job_id__isnull=False).count(),
        "stopping": live.filter(stopping=True).count(),
        "last_heartbeat_age_seconds": age,
        "max_age_seconds": settings.HEALTH_WORKER_MAX_AGE_SECONDS,
    }
    limit = settings.HEALTH_WORKER_MAX_AGE_SECONDS
    if data["live"] or time.time() - STARTED <= limit:
        # A live worker; or this server has just started, and its workers may be starting too.
        return data
    if age is None:
        raise CheckFailed(f"no worker has sent a heartbeat (for {limit} s); jobs cannot run", data)
    if age > limit:
        raise CheckFailed(
            f"no worker has sent a heartbeat for {age:g} s (limit {limit} s); jobs cannot run", data
        )
    return data


def service_health() -> Health:
    """Database, broker and workers, each with its latency; ``ok`` when jobs can run."""
    checks = {"database": _timed(_database)}
    checks["broker"] = _timed(_broker_check)
    if checks["database"]["ok"]:
        checks["workers"] = _timed(_workers)
    else:
        checks["workers"] = {"ok": False, "error": "unknown: the database does not answer"}
    return Health(ok=all(c["ok"] for c in checks.values()), checks=checks)
