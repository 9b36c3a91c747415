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
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

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
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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
                # Header names as the application wrote them (Django: "Content-Type").
                types = [v for k, v in message.get("headers") or [] if k.lower() == b"content-type"]
                if types and types[0].lower().startswith(b"text/event-stream"):
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

# The counters and histograms over jobs: name -> (type, help, label names, buckets).
JOB_METRICS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "jobs_created": (
        "counter",
        "Jobs submitted, by API family (source), kind and model.",
        ("source", "kind", "model"),
        (),
    ),
    "jobs_finished": (
        "counter",
        "Jobs that ended, by final status, API family (source), kind and model.",
        ("status", "source", "kind", "model"),
        (),
    ),
    "job_duration_seconds": (
        "histogram",
        "How long finished jobs ran (the runner's measured duration), by kind.",
        ("kind",),
        DURATION_BUCKETS,
    ),
    "job_queue_wait_seconds": (
        "histogram",
        "Time from submission to a worker starting the job, by kind.",
        ("kind",),
        QUEUE_WAIT_BUCKETS,
    ),
    "tokens": ("counter", "Tokens used by jobs, by model and type.", ("model", "type"), ()),
    "cost_usd": ("counter", "Cost in USD reported by Claude Code, by model.", ("model",), ()),
    "cli_cpu_seconds": (
        "counter",
        "CPU time of the Claude CLI process trees of jobs, by model.",
        ("model",),
        (),
    ),
    "cli_peak_memory_bytes": (
        "histogram",
        "Peak resident memory of each job's Claude CLI process tree.",
        (),
        MEMORY_BUCKETS,
    ),
    "upstream_errors": (
        "counter",
        "Jobs that ended with an error from the Anthropic API, by its HTTP status.",
        ("status",),
        (),
    ),
}


class Totals:
    """Sample values being summed: ``(series name, sorted label pairs) -> value``.

    Histograms are kept as Prometheus exposes them: ``<name>_bucket`` (cumulative,
    with ``le``), ``<name>_count`` and ``<name>_sum``.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self.values[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] += value

    def observe(self, name: str, labels: dict[str, str], value: float, *, count: int = 1) -> None:
        """``count`` observations of ``value`` into histogram ``name``."""
        for bound in JOB_METRICS[name][3]:
            self.add(f"{name}_bucket", {**labels, "le": _bound(bound)}, count if value <= bound else 0)
        self.add(f"{name}_bucket", {**labels, "le": "+Inf"}, count)
        self.add(f"{name}_count", labels, count)
        self.add(f"{name}_sum", labels, value * count)

    def families(self) -> Iterable:
        for name, (kind, documentation, label_names, _buckets) in JOB_METRICS.items():
            full = f"{NAMESPACE}_{name}"
            if kind == "counter":
                family = CounterMetricFamily(full, documentation, labels=label_names)
                for (series, labels), value in sorted(self.values.items()):
                    if series == name:
                        family.add_metric([dict(labels)[label] for label in label_names], value)
            else:
                family = HistogramMetricFamily(full, documentation, labels=label_names)
                for (series, labels), total in sorted(self.values.items()):
                    if series != f"{name}_sum":
                        continue
                    buckets = sorted(
                        (
                            (dict(bucket_labels)["le"], value)
                            for (bucket_series, bucket_labels), value in self.values.items()
                            if bucket_series == f"{name}_bucket"
                            and tuple(p for p in bucket_labels if p[0] != "le") == labels
                        ),
                        key=lambda pair: float(pair[0]),
                    )
                    family.add_metric([dict(labels)[label] for label in label_names], buckets, total)
            yield family


def _bound(value: float) -> str:
    return str(float(value))


def job_contributions(job) -> Totals:
    """What one job adds to the counters and histograms (the same numbers the
    collector's queries count); kept when the job is deleted, see ``job_metrics_retire``."""
    from jobs.models import FINAL_STATUSES

    totals = Totals()
    totals.add("jobs_created", {"source": job.source, "kind": job.kind, "model": job.model}, 1)
    if job.status in FINAL_STATUSES:
        labels = {"status": job.status, "source": job.source, "kind": job.kind, "model": job.model}
        totals.add("jobs_finished", labels, 1)
        if job.duration_ms is not None:
            totals.observe("job_duration_seconds", {"kind": job.kind}, job.duration_ms / 1000)
        match = _UPSTREAM_STATUS.search(job.error_message or "")
        if match and job.status != "completed":
            totals.add("upstream_errors", {"status": match.group(1)}, 1)
    if job.started_at and job.created_at:
        totals.observe(
            "job_queue_wait_seconds", {"kind": job.kind}, (job.started_at - job.created_at).total_seconds()
        )
    if isinstance(job.usage, dict):
        for name, key in TOKEN_TYPES.items():
            value = job.usage.get(key)
            totals.add("tokens", {"model": job.model, "type": name}, value if isinstance(value, int) else 0)
    if job.cost_usd is not None:
        totals.add("cost_usd", {"model": job.model}, job.cost_usd)
    if job.cpu_time_ms is not None:
        totals.add("cli_cpu_seconds", {"model": job.model}, job.cpu_time_ms / 1000)
    if job.peak_memory_bytes is not None:
        totals.observe("cli_peak_memory_bytes", {}, job.peak_memory_bytes)
    return totals


def job_metrics_retire(*, job_id) -> None:
    """Keep what a job counted, just before it is deleted, so no counter ever goes down
    (retention deletes old jobs every hour; Prometheus would read a drop as a reset).

    Call it in the transaction that deletes the row: it locks the row, so of two
    deletes of one job only the one that finds it counts it.
    """
    from jobs.models import Job, RetiredJobMetric

    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        return
    contributions = {
        (series, json.dumps(labels, separators=(",", ":"))): value
        for (series, labels), value in job_contributions(job).values.items()
    }
    # Every series exists from now on (an empty histogram bucket is a 0, not a gap); one
    # query, and a row another delete created meanwhile is left alone ...
    RetiredJobMetric.objects.bulk_create(
        [RetiredJobMetric(series=series, labels=labels, value=0) for series, labels in contributions],
        ignore_conflicts=True,
    )
    # ... then the job's numbers are added where they are not 0, atomically in the database.
    for (series, labels), value in contributions.items():
        if value:
            RetiredJobMetric.objects.filter(series=series, labels=labels).update(value=F("value") + value)


class JobsCollector:
    """The job facts: the jobs table read at every scrape, plus what deleted jobs had
    counted (see the module docstring)."""

    def describe(self) -> Iterable:
        return []  # no queries when registered

    def collect(self) -> Iterable:
        from jobs.models import FINAL_STATUSES, Job, JobStatus, RetiredJobMetric

        started = time.monotonic()
        jobs = Job.objects.order_by()
        totals = Totals()
        for row in RetiredJobMetric.objects.values_list("series", "labels", "value"):
            series, labels, value = row
            totals.values[(series, tuple(tuple(pair) for pair in json.loads(labels)))] += value

        for row in jobs.values("status", "source", "kind", "model").annotate(n=Count("pk")):
            totals.add("jobs_created", {k: row[k] for k in ("source", "kind", "model")}, row["n"])
            if row["status"] in FINAL_STATUSES:
                totals.add(
                    "jobs_finished", {k: row[k] for k in ("status", "source", "kind", "model")}, row["n"]
                )
        self._histogram(
            totals,
            "job_duration_seconds",
            jobs.filter(status__in=FINAL_STATUSES, duration_ms__isnull=False),
            "duration_ms",
            lambda bound: int(bound * 1000),
            scale=0.001,
        )
        wait = ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
        self._histogram(
            totals,
            "job_queue_wait_seconds",
            jobs.filter(started_at__isnull=False).annotate(wait=wait),
            "wait",
            lambda bound: timedelta(seconds=bound),
        )
        self._usage(totals, jobs)
        self._upstream_errors(totals, jobs, JobStatus)
        yield from totals.families()

        load = jobs.aggregate(
            pending=Count("pk", filter=Q(status=JobStatus.PENDING)),
            running=Count("pk", filter=Q(status=JobStatus.RUNNING)),
            oldest_pending=Max(
                ExpressionWrapper(_now() - F("created_at"), output_field=DurationField()),
                filter=Q(status=JobStatus.PENDING),
            ),
            running_peak=Max("peak_memory_bytes", filter=Q(status=JobStatus.RUNNING)),
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
        yield GaugeMetricFamily(
            f"{NAMESPACE}_cli_running_peak_memory_bytes",
            "Largest peak memory sampled so far among running jobs' CLI process trees.",
            value=load["running_peak"] or 0,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_metrics_collect_seconds",
            "Time this scrape spent reading the jobs table.",
            value=time.monotonic() - started,
        )

    @staticmethod
    def _histogram(totals: Totals, name: str, rows, field: str, bound_value, *, scale: float = 1.0) -> None:
        buckets = JOB_METRICS[name][3]
        label_names = JOB_METRICS[name][2]
        keys = [f"le_{i}" for i in range(len(buckets))]
        aggregated = rows.values(*label_names) if label_names else rows
        counts = {
            "n": Count("pk"),
            "total": Sum(field),
            **{
                key: Count("pk", filter=Q(**{f"{field}__lte": bound_value(bound)}))
                for key, bound in zip(keys, buckets, strict=True)
            },
        }
        result = aggregated.annotate(**counts) if label_names else [aggregated.aggregate(**counts)]
        for row in result:
            if not row["n"]:
                continue
            labels = {label: row[label] for label in label_names}
            for key, bound in zip(keys, buckets, strict=True):
                totals.add(f"{name}_bucket", {**labels, "le": _bound(bound)}, row[key])
            totals.add(f"{name}_bucket", {**labels, "le": "+Inf"}, row["n"])
            totals.add(f"{name}_count", labels, row["n"])
            total = row["total"]
            if isinstance(total, timedelta):
                total = total.total_seconds()
            totals.add(f"{name}_sum", labels, (total or 0) * scale)

    def _usage(self, totals: Totals, jobs) -> None:
        sums = {name: Sum(Cast(KT(f"usage__{key}"), BigIntegerField())) for name, key in TOKEN_TYPES.items()}
        for row in jobs.filter(usage__isnull=False).values("model").annotate(**sums):
            for name in TOKEN_TYPES:
                totals.add("tokens", {"model": row["model"], "type": name}, row[name] or 0)
        for row in jobs.filter(cost_usd__isnull=False).values("model").annotate(c=Sum("cost_usd")):
            totals.add("cost_usd", {"model": row["model"]}, row["c"] or 0.0)
        for row in jobs.filter(cpu_time_ms__isnull=False).values("model").annotate(ms=Sum("cpu_time_ms")):
            totals.add("cli_cpu_seconds", {"model": row["model"]}, (row["ms"] or 0) / 1000)
        self._histogram(
            totals,
            "cli_peak_memory_bytes",
            jobs.filter(peak_memory_bytes__isnull=False),
            "peak_memory_bytes",
            int,
        )

    @staticmethod
    def _upstream_errors(totals: Totals, jobs, job_status) -> None:
        messages = jobs.filter(
            status__in=[job_status.FAILED, job_status.TIMEOUT, job_status.CANCELLED],
            error_message__contains="(upstream HTTP ",
        ).values_list("error_message", flat=True)
        for message in messages.iterator(chunk_size=500):
            match = _UPSTREAM_STATUS.search(message)
            if match:
                totals.add("upstream_errors", {"status": match.group(1)}, 1)


def _now() -> Value:
    return Value(timezone.now(), output_field=DateTimeField())


class _InProcess:
    """This process's own metrics (the default registry), for the single-process case."""

    def collect(self):
        return REGISTRY.collect()


def _forget_dead_processes(directory: str) -> None:
    """Drop the live gauges (open connections) of server processes that have exited.

    prometheus_client expects a process manager to call ``mark_process_dead``
    when a worker exits; uvicorn has no such hook, so the scrape does it.
    """
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1]) if path.stem.rsplit("_", 1)[1].isdigit() else None
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, another user's


def metrics_text() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _forget_dead_processes(directory)
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
