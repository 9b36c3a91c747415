"""GET /metrics: the Prometheus text format, what it counts, and who may scrape it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from claudesvc.auth import Caller
from claudesvc.prometheus import OPEN_CONNECTIONS, ConnectionMetrics
from jobs.models import Job, JobStatus
from jobs.services import job_create

pytestmark = pytest.mark.django_db


def scrape(client, **extra) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _job(key, *, status, model="haiku", source="jobs", **fields) -> Job:
    job = job_create(caller=Caller(api_key=key), prompt="p", model=model, source=source, enqueue=False)
    Job.objects.filter(pk=job.pk).update(status=status, **fields)
    return job


def test_it_reports_the_jobs_table(client, owner_key):
    now = timezone.now()
    key = owner_key.row
    _job(key, status=JobStatus.PENDING)
    _job(key, status=JobStatus.PENDING, source="compat")
    _job(key, status=JobStatus.RUNNING, started_at=now, peak_memory_bytes=300 * 2**20)
    for duration_ms, cost in [(1500, 0.01), (45_000, 0.02)]:
        job = _job(
            key,
            status=JobStatus.COMPLETED,
            duration_ms=duration_ms,
            cost_usd=cost,
            cpu_time_ms=2500,
            peak_memory_bytes=100 * 2**20,
            usage={"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 3},
            finished_at=now,
        )
        # Waited 3 seconds in the queue.
        Job.objects.filter(pk=job.pk).update(started_at=job.created_at + timedelta(seconds=3))
    _job(
        key,
        status=JobStatus.FAILED,
        model="sonnet",
        error_message="Claude Code reported an error (upstream HTTP 429): rate limited",
        finished_at=now,
    )

    s = scrape(client)

    assert value(s, "claudesvc_queue_depth") == 2
    assert value(s, "claudesvc_jobs_running") == 1
    assert value(s, "claudesvc_queue_oldest_age_seconds") >= 0
    assert value(s, "claudesvc_jobs_created_total", source="jobs", kind="claude", model="haiku") == 4
    assert value(s, "claudesvc_jobs_created_total", source="compat", kind="claude", model="haiku") == 1
    assert (
        value(
            s,
            "claudesvc_jobs_finished_total",
            status="completed",
            source="jobs",
            kind="claude",
            model="haiku",
        )
        == 2
    )
    assert (
        value(
            s, "claudesvc_jobs_finished_total", status="failed", source="jobs", kind="claude", model="sonnet"
        )
        == 1
    )
    # Durations: 1.5 s and 45 s.
    assert value(s, "claudesvc_job_duration_seconds_bucket", kind="claude", le="1.0") == 0
    assert value(s, "claudesvc_job_duration_seconds_bucket", kind="claude", le="2.5") == 1
    assert value(s, "claudesvc_job_duration_seconds_bucket", kind="claude", le="60.0") == 2
    assert value(s, "claudesvc_job_duration_seconds_bucket", kind="claude", le="+Inf") == 2
    assert value(s, "claudesvc_job_duration_seconds_sum", kind="claude") == pytest.approx(46.5)
    # Time in the queue: two jobs waited 3 s, the running one about none.
    assert value(s, "claudesvc_job_queue_wait_seconds_count", kind="claude") == 3
    assert value(s, "claudesvc_job_queue_wait_seconds_bucket", kind="claude", le="2.5") == 1
    assert value(s, "claudesvc_job_queue_wait_seconds_bucket", kind="claude", le="5.0") == 3
    assert value(s, "claudesvc_job_queue_wait_seconds_sum", kind="claude") == pytest.approx(6, abs=0.5)
    assert value(s, "claudesvc_tokens_total", model="haiku", type="input") == 20
    assert value(s, "claudesvc_tokens_total", model="haiku", type="output") == 14
    assert value(s, "claudesvc_tokens_total", model="haiku", type="cache_read") == 6
    assert value(s, "claudesvc_cost_usd_total", model="haiku") == pytest.approx(0.03)
    assert value(s, "claudesvc_cli_cpu_seconds_total", model="haiku") == pytest.approx(5.0)
    assert value(s, "claudesvc_cli_peak_memory_bytes_bucket", le=str(float(128 * 2**20))) == 2
    assert value(s, "claudesvc_cli_peak_memory_bytes_count") == 3
    assert value(s, "claudesvc_cli_running_peak_memory_bytes") == 300 * 2**20
    assert value(s, "claudesvc_upstream_errors_total", status="429") == 1


def test_every_metric_name_carries_the_prefix_and_http_metrics_are_per_view(client, owner_key):
    client.get("/jobs", HTTP_X_API_KEY=owner_key.secret)
    s = scrape(client)
    ours = {name for name, _ in s if not name.startswith(("process_", "python_"))}
    assert ours and all(name.startswith("claudesvc_") for name in ours), sorted(ours)
    assert (
        value(
            s,
            "claudesvc_django_http_requests_total_by_view_transport_method_total",
            view="jobs:list",
            transport="http",
            method="GET",
        )
        >= 1
    ), sorted(n for n, _ in s if "view" in n)


def test_it_refuses_addresses_outside_the_allowed_networks(client, settings):
    import ipaddress

    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert b"METRICS_ALLOWED_NETWORKS" in client.get("/metrics", REMOTE_ADDR="192.168.1.5").content
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_it_asks_for_the_bearer_token_when_one_is_set(client, settings, owner_key):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    # An API key is not a metrics credential.
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {owner_key.secret}").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token").status_code == 200


def test_a_bad_network_setting_stops_start_up(monkeypatch):
    import subprocess
    import sys

    env = {"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-net"}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**__import__("os").environ, **env, "DJANGO_SETTINGS_MODULE": "claudesvc.settings"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "'not-a-net' is not an address or network" in done.stderr


def test_scraping_is_outside_the_rate_limits_and_refusals_are_counted(client, settings, owner_key):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "jobs": "2/60s"}
    for _ in range(5):
        client.get("/metrics")
    before = value(scrape(client), "claudesvc_ratelimit_refusals_total", group="jobs")
    statuses = [client.get("/jobs", HTTP_X_API_KEY=owner_key.secret).status_code for _ in range(4)]
    assert statuses.count(429) >= 2
    after = value(scrape(client), "claudesvc_ratelimit_refusals_total", group="jobs")
    assert after - before == statuses.count(429)


async def test_open_sse_and_websocket_connections_are_counted_while_open():
    import asyncio

    release = asyncio.Event()
    started = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"Content-Type", b"text/event-stream")],
                }
            )
        started.set()
        await release.wait()

    wrapped = ConnectionMetrics(app)
    sse = OPEN_CONNECTIONS.labels(protocol="sse", family="jobs")
    ws = OPEN_CONNECTIONS.labels(protocol="websocket", family="process")
    base_sse, base_ws = sse._value.get(), ws._value.get()

    async def noop(message):
        return None

    async def receive():
        return {}

    tasks = [
        asyncio.create_task(wrapped({"type": "http", "path": "/jobs/x/events"}, receive, noop)),
        asyncio.create_task(wrapped({"type": "websocket", "path": "/api/v1/claude/ws"}, receive, noop)),
    ]
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)
    assert sse._value.get() == base_sse + 1
    assert ws._value.get() == base_ws + 1
    release.set()
    await asyncio.gather(*tasks)
    assert (sse._value.get(), ws._value.get()) == (base_sse, base_ws)


def test_deleting_jobs_never_makes_a_counter_go_down(client, owner_key, settings):
    from claudesvc.prometheus import JOB_METRICS
    from jobs.services import job_delete, job_delete_expired

    now = timezone.now()
    key = owner_key.row
    jobs = [
        _job(
            key,
            status=status,
            model=model,
            duration_ms=duration,
            cost_usd=0.02,
            cpu_time_ms=1200,
            peak_memory_bytes=200 * 2**20,
            usage={"input_tokens": 5, "output_tokens": 9},
            error_message=error,
            started_at=now,
            finished_at=now - timedelta(days=40),
        )
        for status, model, duration, error in [
            (JobStatus.COMPLETED, "haiku", 800, ""),
            (JobStatus.COMPLETED, "haiku", 70_000, ""),
            (
                JobStatus.FAILED,
                "opus",
                3_000,
                "Claude Code reported an error (upstream HTTP 529): overloaded",
            ),
        ]
    ]
    _job(key, status=JobStatus.PENDING)

    def job_series(samples):
        names = set()
        for name, (kind, *_rest) in JOB_METRICS.items():
            full = f"claudesvc_{name}"
            names |= (
                {f"{full}_total"} if kind == "counter" else {f"{full}_bucket", f"{full}_count", f"{full}_sum"}
            )
        return {k: pytest.approx(v) for k, v in samples.items() if k[0] in names}

    before = job_series(scrape(client))
    assert value(scrape(client), "claudesvc_upstream_errors_total", status="529") == 1
    job_delete(job=jobs[0])
    settings.JOB_RETENTION_DAYS = 30
    assert job_delete_expired() == 2
    assert Job.objects.count() == 1
    after = job_series(scrape(client))
    assert after == before
    # And new jobs add on top of what was kept.
    _job(key, status=JobStatus.COMPLETED, model="haiku", duration_ms=500, finished_at=now)
    s = scrape(client)
    assert (
        value(
            s,
            "claudesvc_jobs_finished_total",
            status="completed",
            source="jobs",
            kind="claude",
            model="haiku",
        )
        == 3
    )
    assert value(s, "claudesvc_job_duration_seconds_count", kind="claude") == 4
    assert value(s, "claudesvc_job_duration_seconds_bucket", kind="claude", le="1.0") == 2


def test_multiprocess_mode_sums_what_several_server_processes_counted(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, a scrape answered by one process includes the others' counts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.e2e.conftest import _database_url

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),  # the test database, for the jobs part of the scrape
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "claudesvc.settings",
    }
    count = (
        "import django; django.setup()\n"
        "from claudesvc.prometheus import OPEN_CONNECTIONS, record_rate_limit_refusal\n"
        "for _ in range({n}): record_rate_limit_refusal('compat')\n"
        "OPEN_CONNECTIONS.labels(protocol='sse', family='jobs').inc()\n"
    )
    for n in (2, 3):
        done = subprocess.run(
            [sys.executable, "-c", count.format(n=n)], cwd=root, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr
    scrape_code = (
        "import django; django.setup()\n"
        "from claudesvc.prometheus import metrics_text\n"
        "import sys; sys.stdout.write(metrics_text().decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", scrape_code], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
    refusals = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["claudesvc_ratelimit_refusals"].samples
        if s.name.endswith("_total")
    }
    assert refusals[(("group", "compat"),)] == 5
    # Open connections count only live processes: both counting processes have exited.
    gone = families.get("claudesvc_open_connections")
    assert gone is None or all(s.value == 0 for s in gone.samples)
    assert not list(tmp_path.glob("gauge_live*"))
    assert "claudesvc_queue_depth" in families  # the database part comes along
