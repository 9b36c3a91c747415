"""Claim benchmark: how long ``job_claim_next`` takes with many pending jobs.

Fills a database with ``--pending`` pending jobs of one flooding key (its
active limit lifted), a few of ``--keys`` other keys, and ``--running``
running ones, then times claims (each claim is undone afterwards so every
round sees the same table) and prints the median and p95 in milliseconds.

    .venv/bin/python bench/fair_claim.py                                  # throw-away SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/claudesvc_x .venv/bin/python bench/fair_claim.py

The database is migrated and its jobs and keys are DELETED first: point it
at a database of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pending", type=int, default=50000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--running", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="fair-claim-")
    os.environ.setdefault("CLAUDESVC_VAR_DIR", tmp)
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/bench.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claudesvc.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from apikeys.models import ApiKey
    from apikeys.services import api_key_create
    from jobs.models import Job, JobStatus
    from jobs.queue import job_claim_next

    call_command("migrate", verbosity=0)
    Job.objects.all().delete()
    ApiKey.objects.all().delete()
    flood, _ = api_key_create(name="flood")
    others = [api_key_create(name=f"k{i}")[0] for i in range(args.keys)]

    def job(key, status=JobStatus.PENDING, priority=0):
        return Job(
            api_key=key,
            prompt="x",
            model="haiku",
            timeout_seconds=60,
            tool_policy="safe",
            status=status,
            priority=priority,
        )

    rows = [job(flood, priority=i % 3) for i in range(args.pending)]
    rows += [job(k) for k in others for _ in range(5)]
    rows += [job(flood, JobStatus.RUNNING) for _ in range(args.running)]
    for start in range(0, len(rows), 5000):
        Job.objects.bulk_create(rows[start : start + 5000])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE jobs_job")
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        claimed = job_claim_next(worker="bench")
        times.append((time.perf_counter() - started) * 1000)
        Job.objects.filter(pk=claimed.pk).update(status=JobStatus.PENDING, started_at=None, worker="")
        assert claimed.api_key_id != flood.pk, "the flooding key was served before the others"
    times.sort()
    print(
        f"{connection.vendor}: {Job.objects.filter(status=JobStatus.PENDING).count()} pending, "
        f"{args.keys + 1} keys: claim median {statistics.median(times):.1f} ms, "
        f"p95 {times[int(len(times) * 0.95) - 1]:.1f} ms over {args.rounds} rounds"
    )
    Job.objects.all().delete()
    ApiKey.objects.all().delete()


if __name__ == "__main__":
    main()
