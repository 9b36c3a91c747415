"""Prometheus scrapes /metrics of the running service while jobs flow through it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_jobs_e2e import wait_done

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    # As Prometheus does: no API key.
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name, **labels) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, lbls), v in samples.items() if n == name and set(labels.items()) <= set(dict(lbls).items())
    )


def test_prometheus_sees_queue_depth_durations_and_cost_move(service, owner_key):
    before = scrape(service.url)
    with service.client(owner_key) as client:
        slow = [
            client.post("/jobs", json={"prompt": f"slow {i} [[slow:0.3]]" + " word" * 12, "model": "haiku"})
            for i in range(3)
        ]
        ids = [r.json()["data"]["id"] for r in slow]
        # Two workers, three jobs: while they run, one waits.
        busy = None
        deadline = time.monotonic() + 180  # a busy machine starts CLIs slowly
        while time.monotonic() < deadline:
            s = scrape(service.url)
            if total(s, "claudesvc_jobs_running") >= 1 and total(s, "claudesvc_queue_depth") >= 1:
                busy = s
                break
            time.sleep(0.2)
        assert busy, service.logs()

        # An SSE reader is an open connection while it reads.
        seen_open = []

        def read_events():
            with client.stream("GET", f"/jobs/{ids[-1]}/events") as response:
                for _ in response.iter_lines():
                    pass

        reader = threading.Thread(target=read_events)
        reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen_open:
            if total(scrape(service.url), "claudesvc_open_connections", protocol="sse", family="jobs") >= 1:
                seen_open.append(True)
            time.sleep(0.1)
        for job_id in ids:
            assert wait_done(client, job_id, timeout=240)["status"] == "completed"
        reader.join(timeout=60)
        assert seen_open, "the SSE stream never showed as an open connection"

    after = scrape(service.url)
    finished = "claudesvc_jobs_finished_total"
    assert (
        total(after, finished, status="completed", model="haiku")
        - total(before, finished, status="completed", model="haiku")
        == 3
    )
    assert (
        total(after, "claudesvc_job_duration_seconds_count")
        - total(before, "claudesvc_job_duration_seconds_count")
        == 3
    )
    assert total(after, "claudesvc_job_duration_seconds_sum") > total(
        before, "claudesvc_job_duration_seconds_sum"
    )
    assert (
        total(after, "claudesvc_job_queue_wait_seconds_count")
        >= total(before, "claudesvc_job_queue_wait_seconds_count") + 3
    )
    assert total(after, "claudesvc_cost_usd_total", model="haiku") > total(
        before, "claudesvc_cost_usd_total", model="haiku"
    )
    assert total(after, "claudesvc_tokens_total", model="haiku", type="output") > total(
        before, "claudesvc_tokens_total", model="haiku", type="output"
    )
    assert total(after, "claudesvc_cli_peak_memory_bytes_count") > total(
        before, "claudesvc_cli_peak_memory_bytes_count"
    )
    assert total(after, "claudesvc_queue_depth") == 0
    assert total(after, "claudesvc_open_connections", protocol="sse") == 0
    assert (
        total(after, "claudesvc_django_http_requests_total_by_view_transport_method_total", view="jobs:list")
        >= 3
    )
