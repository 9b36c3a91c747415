"""Prometheus metrics at ``GET /metrics`` (text exposition format, names ``claudesvc_…``).

Two sources, chosen by where a fact lives:

- **What jobs did** (counts by status, queue depth, durations, time in the
  queue, tokens, cost, CLI memory and CPU, upstream errors) is computed from
  the database at scrape time by ``JobsCollector``. The jobs table is the one
  truth every worker process on every host writes to, so any number of
  workers, restarts and hosts are counted exactly, with no shared metrics
  directory between web and worker containers and no push gateway. Every web
  instance reports the same values; aggregate them with ``max``, not ``sum``.
  Retention (``JOB_RETENTION_DAYS``) deletes old rows, which Prometheus reads
  as a counter reset; windows shorter than the retention are exact.
- **What a web process saw** (HTTP requests per view through
  ``django-prometheus``, rate-limit and budget refusals, open SSE and
  WebSocket connections) is counted in the process with ``prometheus_client``.
  With several server processes on one host, set ``PROMETHEUS_MULTIPROC_DIR``
  (prometheus_client's multiprocess mode, file-backed values summed at
  scrape time); separate hosts or containers are separate scrape targets.

Access is decided by settings, never by API keys, and ``/metrics`` is outside
every per-key rate limit: ``METRICS_TOKEN`` (a bearer token) and/or
``METRICS_ALLOWED_NETWORKS`` (client address ranges).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import (
    BigIntegerField,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Q,
    Sum,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

NAMESPACE = "claudesvc"
# No "<name>_created" twin per counter: they double the output and Prometheus has no use for them.
disable_created_metrics()

# -- counted in the process ---------------------------------------------------------

RATE_LIMIT_REFUSALS = Counter(
    "ratelimit_refusals",
    "Requests refused by a per-key rate limit, by endpoint group.",
    ["group"],
    namespace=NAMESPACE,
)
BUDGET_REFUSALS = Counter(
    "budget_refusals",
    "Jobs refused because a key's spend or usage budget was exhausted, by budget.",
    ["budget"],
    namespace=NAMESPACE,
)
OPEN_CONNECTIONS = Gauge(
    "open_connections",
    "Open streaming connections: Server-Sent Events responses and WebSockets, by API family.",
    ["protocol", "family"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)


def record_rate_limit_refusal(group: str) -> None:
    RATE_LIMIT_REFUSALS.labels(group=group).inc()


def record_budget_refusal(budget: str) -> None:
    """Count one refusal by a budget (``budget`` names it, e.g. ``daily_cost``); for the budget checks."""
    BUDGET_REFUSALS.labels(budget=budget).inc()


def api_family(path: str) -> str:
    if path.startswith("/api/v1/claude"):
        return "process"
    if path.startswith("/jobs"):
        return "jobs"
    if path.startswith(("/v1/", "/api/rca")):
        return "compat"
    return "other"


class ConnectionMetrics:
    """ASGI middleware: counts open WebSockets, and HTTP responses that turned out
    to be Server-Sent Events (``text/event-stream``), from their start until the
    application returns. Outermost, so every family's streams are seen alike."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            gauge = OPEN_CONNECTIONS.labels(protocol="websocket", family=api_family(scope.get("path", "")))
            gauge.inc()
            try:
                return await self.app(scope, receive, send)
            finally:
                gauge.dec()
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        counted = None

        async def watch(message):
            nonlocal counted
            if message["type"] == "http.response.start" and counted is None:
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    counted = OPEN_CONNECTIONS.labels(
                        protocol="sse", family=api_family(scope.get("path", ""))
                    )
                    counted.inc()
            await send(message)

        try:
            return await self.app(scope, receive, watch)
        finally:
            if counted is not None:
                counted.dec()


# -- computed from the database at scrape time ----------------------------------------

# Seconds; jobs run from a second to JOB_TIMEOUT_SECONDS (30 minutes by default).
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
MEMORY_BUCKETS = tuple(mb * 1024 * 1024 for mb in (64, 128, 256, 512, 1024, 2048, 4096, 8192))
TOKEN_TYPES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_creation": "cache_creation_input_tokens",
}
# How the runner names an error the Anthropic API answered ("… (upstream HTTP 429): …").
_UPSTREAM_STATUS = re.compile(r"\(upstream HTTP (\d{3})\)")


def _histogram(name, documentation, rows, label_names, bucket_keys, buckets, scale=1.0):
    family = HistogramMetricFamily(f"{NAMESPACE}_{name}", documentation, labels=label_names)
    for row in rows:
        cumulative = [(_bound(b), row[key]) for b, key in zip(buckets, bucket_keys, strict=True)]
        cumulative.append(("+Inf", row["n"]))
        total = row["total"]
        if isinstance(total, timedelta):
            total = total.total_seconds()
        family.add_metric([row[label] for label in label_names], cumulative, (total or 0) * scale)
    return family


def _bound(value: float) -> str:
    return str(float(value))


class JobsCollector:
    """The job facts, read from the jobs table on every scrape (see the module docstring)."""

    def describe(self) -> Iterable:
        return []  # no queries when registered

    def collect(self) -> Iterable:
        from jobs.models import FINAL_STATUSES, Job, JobStatus

        started = time.monotonic()
        jobs = Job.objects.order_by()

        created = CounterMetricFamily(
            f"{NAMESPACE}_jobs_created",
            "Jobs submitted, by API family (source), kind and model.",
            labels=["source", "kind", "model"],
        )
        finished = CounterMetricFamily(
            f"{NAMESPACE}_jobs_finished",
            "Jobs that ended, by final status, API family (source), kind and model.",
            labels=["status", "source", "kind", "model"],
        )
        by_labels = jobs.values("status", "source", "kind", "model").annotate(n=Count("pk"))
        created_totals: dict[tuple, int] = {}
        for row in by_labels:
            key = (row["source"], row["kind"], row["model"])
            created_totals[key] = created_totals.get(key, 0) + row["n"]
            if row["status"] in FINAL_STATUSES:
                finished.add_metric([row["status"], *key], row["n"])
        for key, n in sorted(created_totals.items()):
            created.add_metric(list(key), n)
        yield created
        yield finished

        load = jobs.aggregate(
            pending=Count("pk", filter=Q(status=JobStatus.PENDING)),
            running=Count("pk", filter=Q(status=JobStatus.RUNNING)),
            oldest_pending=Max(
                ExpressionWrapper(_now() - F("created_at"), output_field=DurationField()),
                filter=Q(status=JobStatus.PENDING),
            ),
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_queue_depth", "Jobs waiting for a worker (pending).", value=load["pending"]
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_jobs_running", "Jobs running on a worker now.", value=load["running"]
        )
        oldest = load["oldest_pending"]
        yield GaugeMetricFamily(
            f"{NAMESPACE}_queue_oldest_age_seconds",
            "How long the oldest pending job has waited (0 when none waits).",
            value=max(0.0, oldest.total_seconds()) if oldest else 0.0,
        )

        yield self._durations(jobs, FINAL_STATUSES)
        yield self._queue_wait(jobs)
        yield from self._usage(jobs)
        yield from self._cli_resources(jobs)
        yield self._upstream_errors(jobs, JobStatus)

        yield GaugeMetricFamily(
            f"{NAMESPACE}_metrics_collect_seconds",
            "Time this scrape spent reading the jobs table.",
            value=time.monotonic() - started,
        )

    @staticmethod
    def _durations(jobs, final_statuses):
        keys = [f"le_{i}" for i in range(len(DURATION_BUCKETS))]
        rows = (
            jobs.filter(status__in=final_statuses, duration_ms__isnull=False)
            .values("kind")
            .annotate(
                n=Count("pk"),
                total=Sum("duration_ms"),
                **{
                    key: Count("pk", filter=Q(duration_ms__lte=int(bound * 1000)))
                    for key, bound in zip(keys, DURATION_BUCKETS, strict=True)
                },
            )
            .order_by("kind")
        )
        return _histogram(
            "job_duration_seconds",
            "How long finished jobs ran (the runner's measured duration), by kind.",
            rows,
            ["kind"],
            keys,
            DURATION_BUCKETS,
            scale=0.001,
        )

    @staticmethod
    def _queue_wait(jobs):
        keys = [f"le_{i}" for i in range(len(QUEUE_WAIT_BUCKETS))]
        wait = ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
        rows = (
            jobs.filter(started_at__isnull=False)
            .annotate(wait=wait)
            .values("kind")
            .annotate(
                n=Count("pk"),
                total=Sum("wait"),
                **{
                    key: Count("pk", filter=Q(wait__lte=timedelta(seconds=bound)))
                    for key, bound in zip(keys, QUEUE_WAIT_BUCKETS, strict=True)
                },
            )
            .order_by("kind")
        )
        return _histogram(
            "job_queue_wait_seconds",
            "Time from submission to a worker starting the job, by kind.",
            rows,
            ["kind"],
            keys,
            QUEUE_WAIT_BUCKETS,
        )

    @staticmethod
    def _usage(jobs):
        tokens = CounterMetricFamily(
            f"{NAMESPACE}_tokens", "Tokens used by jobs, by model and type.", labels=["model", "type"]
        )
        cost = CounterMetricFamily(
            f"{NAMESPACE}_cost_usd", "Cost in USD reported by Claude Code, by model.", labels=["model"]
        )
        sums = {name: Sum(Cast(KT(f"usage__{key}"), BigIntegerField())) for name, key in TOKEN_TYPES.items()}
        rows = jobs.filter(usage__isnull=False).values("model").annotate(**sums).order_by("model")
        for row in rows:
            for name in TOKEN_TYPES:
                tokens.add_metric([row["model"], name], row[name] or 0)
        for row in jobs.filter(cost_usd__isnull=False).values("model").annotate(c=Sum("cost_usd")).order_by():
            cost.add_metric([row["model"]], row["c"] or 0.0)
        yield tokens
        yield cost

    @staticmethod
    def _cli_resources(jobs):
        cpu = CounterMetricFamily(
            f"{NAMESPACE}_cli_cpu_seconds",
            "CPU time of the Claude CLI process trees of jobs, by model.",
            labels=["model"],
        )
        for row in (
            jobs.filter(cpu_time_ms__isnull=False).values("model").annotate(ms=Sum("cpu_time_ms")).order_by()
        ):
            cpu.add_metric([row["model"]], (row["ms"] or 0) / 1000)
        yield cpu
        keys = [f"le_{i}" for i in range(len(MEMORY_BUCKETS))]
        row = jobs.filter(peak_memory_bytes__isnull=False).aggregate(
            n=Count("pk"),
            total=Sum("peak_memory_bytes"),
            **{
                key: Count("pk", filter=Q(peak_memory_bytes__lte=bound))
                for key, bound in zip(keys, MEMORY_BUCKETS, strict=True)
            },
        )
        yield _histogram(
            "cli_peak_memory_bytes",
            "Peak resident memory of each job's Claude CLI process tree.",
            [row],
            [],
            keys,
            MEMORY_BUCKETS,
        )
        running = jobs.filter(status="running").aggregate(peak=Max("peak_memory_bytes"))["peak"]
        yield GaugeMetricFamily(
            f"{NAMESPACE}_cli_running_peak_memory_bytes",
            "Largest peak memory sampled so far among running jobs' CLI process trees.",
            value=running or 0,
        )

    @staticmethod
    def _upstream_errors(jobs, job_status):
        family = CounterMetricFamily(
            f"{NAMESPACE}_upstream_errors",
            "Jobs that ended with an error from the Anthropic API, by its HTTP status.",
            labels=["status"],
        )
        counts: dict[str, int] = {}
        messages = jobs.filter(
            status__in=[job_status.FAILED, job_status.TIMEOUT, job_status.CANCELLED],
            error_message__contains="(upstream HTTP ",
        ).values_list("error_message", flat=True)
        for message in messages.iterator(chunk_size=500):
            match = _UPSTREAM_STATUS.search(message)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        return family


def _now() -> Value:
    return Value(timezone.now(), output_field=DateTimeField())


class _InProcess:
    """This process's own metrics (the default registry), for the single-process case."""

    def collect(self):
        return REGISTRY.collect()


def metrics_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_InProcess())
    registry.register(JobsCollector())
    return generate_latest(registry)


# -- the endpoint ------------------------------------------------------------------------


def _client_allowed(request: HttpRequest) -> bool:
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in networks)


def _token_ok(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` for Prometheus; no API key, no rate limit, guarded by settings."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(
            "Method not allowed\n", status=405, content_type="text/plain", headers={"Allow": "GET"}
        )
    if not _client_allowed(request):
        return HttpResponse(
            "Forbidden: the client address is outside METRICS_ALLOWED_NETWORKS\n",
            status=403,
            content_type="text/plain",
        )
    if not _token_ok(request):
        return HttpResponse(
            "Unauthorized: send Authorization: Bearer <METRICS_TOKEN>\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)
