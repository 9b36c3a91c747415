"""The Jobs API as a user meets it: the real server, worker, CLI, over HTTP."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/jobs/{job_id}").json()["data"]
        if data["status"] in ("completed", "failed"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def sse_events(response: httpx.Response) -> list[dict]:
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value.lstrip(" ")
    return events


def test_a_job_runs_end_to_end_and_streams_by_offset(service, owner_key):
    with service.client(owner_key) as client:
        created = client.post("/jobs", json={"prompt": "Hi [[reply:Hello, world]]", "model": "haiku"})
        assert created.status_code == 202, created.text
        job_id = created.json()["data"]["id"]
        seen, offset = [], 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = client.get(f"/jobs/{job_id}/stream", params={"offset": offset}).json()["data"]
            seen.extend(page["events"])
            offset = page["next_offset"]
            if page["status"] in ("completed", "failed") and not page["events"]:
                break
            time.sleep(0.1)
        final = client.get(f"/jobs/{job_id}").json()["data"]
    assert final["status"] == "completed", (final, service.logs())
    assert final["result"] == "Hello, world"
    assert final["finished_at"] and final["usage"]["output_tokens"] > 0
    assert offset == len(seen)
    assert seen[0]["type"] == "system" and seen[-1]["type"] == "result"


def test_events_stream_live_as_sse_and_resume_after_last_event_id(service, owner_key):
    with service.client(owner_key) as client:
        job_id = client.post(
            "/jobs", json={"prompt": "Slow [[slow:0.05]] one two three four five six"}
        ).json()["data"]["id"]
        # Exactly what EventSource sends.
        sse_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        with client.stream("GET", f"/jobs/{job_id}/events", headers=sse_headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
        data_events = [e for e in events if "id" in e]
        assert events[-1]["event"] == "done"
        assert json.loads(events[-1]["data"])["status"] == "completed"
        assert [int(e["id"]) for e in data_events] == list(range(len(data_events)))
        assert json.loads(data_events[-1]["data"])["type"] == "result"
        # Reconnect after the second event: the rest, nothing repeated.
        resume_headers = {**sse_headers, "Last-Event-ID": "1"}
        with client.stream("GET", f"/jobs/{job_id}/events", headers=resume_headers) as response:
            resumed = [e for e in sse_events(response) if "id" in e]
        assert [e["id"] for e in resumed] == [e["id"] for e in data_events[2:]]
        with client.stream("GET", f"/jobs/{job_id}/events", params={"last_event_id": 0}) as response:
            assert next(e for e in sse_events(response) if "id" in e)["id"] == "1"


def test_another_key_cannot_see_or_touch_the_job(service, owner_key, other_key):
    with service.client(owner_key) as client:
        job_id = client.post("/jobs", json={"prompt": "private [[reply:mine]]"}).json()["data"]["id"]
        wait_done(client, job_id)
    with service.client(other_key) as other:
        for path in [f"/jobs/{job_id}", f"/jobs/{job_id}/stream", f"/jobs/{job_id}/events"]:
            assert other.get(path).status_code == 404
        assert other.delete(f"/jobs/{job_id}").status_code == 404
        assert job_id not in other.get("/jobs").text
    with service.client() as anonymous:
        assert anonymous.get(f"/jobs/{job_id}").status_code == 401


def test_deleting_a_running_job_stops_its_process(service, owner_key):
    from jobs.models import Job

    with service.client(owner_key) as client:
        job_id = client.post("/jobs", json={"prompt": "Long [[slow:0.5]]" + " word" * 200}).json()["data"][
            "id"
        ]
        deadline = time.monotonic() + 30
        pid = None
        while time.monotonic() < deadline and pid is None:
            pid = Job.objects.filter(pk=job_id).values_list("cli_pid", flat=True).first()
            time.sleep(0.1)
        assert pid, service.logs()
        assert client.delete(f"/jobs/{job_id}").json() == {"success": True, "message": "Job deleted"}
        assert client.get(f"/jobs/{job_id}").status_code == 404

    def alive():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive()


def test_jobs_wait_as_pending_while_workers_are_busy_and_run_in_order(service, owner_key):
    with service.client(owner_key) as client:
        # Two workers: two slow jobs fill them, the next ones wait.
        slow = [
            client.post("/jobs", json={"prompt": "Busy [[slow:0.2]]" + " w" * 15}).json()["data"]["id"]
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            client.get(f"/jobs/{j}").json()["data"]["status"] == "pending" for j in slow
        ):
            time.sleep(0.1)
        waiting = [
            client.post("/jobs", json={"prompt": f"Queued {i} [[reply:q{i}]]"}).json()["data"]["id"]
            for i in range(3)
        ]
        assert {client.get(f"/jobs/{j}").json()["data"]["status"] for j in waiting} == {"pending"}
        for job_id in slow + waiting:
            assert wait_done(client, job_id)["status"] == "completed"
        started = [client.get(f"/jobs/{j}").json()["data"]["started_at"] for j in waiting]
    assert started == sorted(started)


def test_a_failing_upstream_shows_as_a_failed_job(service, owner_key):
    with service.client(owner_key) as client:
        job_id = client.post("/jobs", json={"prompt": "[[error:400]]"}).json()["data"]["id"]
        data = wait_done(client, job_id)
    assert data["status"] == "failed"
    assert "fake upstream 400" in data["error_message"]
