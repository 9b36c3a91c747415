"""The Process API (seed 002) as a user meets it: the real server, worker and CLI,
over HTTP and WebSocket, with the seed's requests as written."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BASE = "/api/v1/claude"
FINAL = {"completed", "failed", "timeout", "cancelled"}


def wait_status(client: httpx.Client, pid: str, wanted: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"{BASE}/processes/{pid}").json()["data"]
        if data["status"] in wanted:
            return data
        time.sleep(0.15)
    raise AssertionError(f"process {pid} never reached {wanted}: {data}")


def start(client: httpx.Client, prompt: str, **fields) -> str:
    response = client.post(f"{BASE}/execute/async", json={"prompt": prompt, **fields})
    assert response.status_code == 202, response.text
    return response.json()["data"]["processId"]


def slow_prompt(words: int = 15, pause: float = 0.2) -> str:
    return f"Busy [[slow:{pause}]]" + " w" * words


def test_health_without_a_key(service):
    response = httpx.get(f"{service.url}{BASE}/health")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["healthy"] is True and data["cli"]["installed"] is True and data["cli"]["version"]
    assert data["apiFallbackAvailable"] is True
    assert data["maxConcurrentProcesses"] == 2


def test_execute_waits_and_answers_the_seed_body(service, owner_key, upstream):
    with service.client(owner_key) as client:
        response = client.post(
            f"{BASE}/execute",
            json={
                "prompt": "Explain the concept of recursion in programming [[reply:Recursion is a technique]]",
                "systemPrompt": "You are a helpful programming tutor",
                "maxTokens": 1000,
            },
            headers={"X-Request-ID": "req_xyz789"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["requestId"] == "req_xyz789"
    data = body["data"]
    assert data["status"] == "completed", (data, service.logs())
    assert data["id"].startswith("claude_") and data["userId"] == f"key:{owner_key.row.prefix}"
    assert (data["stdout"], data["exitCode"], data["executedVia"]) == ("Recursion is a technique", 0, "cli")
    assert data["startedAt"] < data["completedAt"] and data["durationMs"] > 0
    parsed = data["parsedResponse"]
    assert parsed["content"] == "Recursion is a technique"
    usage = parsed["usage"]
    assert usage["outputTokens"] > 0 and usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    sent = upstream.main_requests()[-1]["body"]
    assert sent["max_tokens"] == 1000
    assert "You are a helpful programming tutor" in json.dumps(sent["system"])


def test_execute_async_then_poll(service, owner_key):
    with service.client(owner_key) as client:
        response = client.post(
            f"{BASE}/execute/async", json={"prompt": "Hi [[reply:Hello]]", "model": "haiku"}
        )
        assert response.status_code == 202
        accepted = response.json()["data"]
        assert accepted["status"] == "pending"
        data = wait_status(client, accepted["processId"], FINAL)
    assert data["status"] == "completed"
    assert set(data) == {
        "processId",
        "status",
        "createdAt",
        "startedAt",
        "completedAt",
        "durationMs",
        "result",
    }
    assert data["result"]["stdout"] == "Hello" and data["result"]["stderr"] == ""


def test_busy_slots_answer_202_queued_and_waiting_processes_start_by_priority(service, owner_key):
    with service.client(owner_key) as client:
        busy = [start(client, slow_prompt()) for _ in range(2)]
        for pid in busy:
            wait_status(client, pid, {"running"})
        began = time.monotonic()
        response = client.post(f"{BASE}/execute", json={"prompt": "Queued [[reply:later]]"})
        assert response.status_code == 202, response.text
        assert time.monotonic() - began < 10
        queued = response.json()["data"]
        assert queued["status"] == "queued"
        assert client.get(f"{BASE}/processes/{queued['processId']}").json()["data"]["status"] == "queued"
        listed = client.get(f"{BASE}/processes", params={"status": "queued"}).json()["data"]
        assert [p["processId"] for p in listed["processes"]] == [queued["processId"]]
        waiting = {
            name: start(client, f"{name} [[reply:{name}]]", priority=priority)
            for name, priority in [("low-a", 0), ("high-a", 90), ("low-b", 0), ("high-b", 90), ("mid", 50)]
        }
        for pid in [*busy, queued["processId"], *waiting.values()]:
            assert wait_status(client, pid, FINAL)["status"] == "completed", service.logs()
        started = {
            name: client.get(f"{BASE}/processes/{pid}").json()["data"]["startedAt"]
            for name, pid in [("queued", queued["processId"]), *waiting.items()]
        }
    order = sorted(started, key=started.get)
    assert order == ["high-a", "high-b", "mid", "queued", "low-a", "low-b"]


def test_a_process_past_its_timeout_ends_as_timeout(service, owner_key):
    with service.client(owner_key) as client:
        pid = start(client, slow_prompt(words=200, pause=0.3), timeoutMs=3000)
        data = wait_status(client, pid, FINAL)
    assert data["status"] == "timeout"
    assert data["result"]["status"] == "timeout"
    assert "timeout of 3 s" in data["result"]["error"]
    assert data["durationMs"] < 15_000


def test_cancelling_a_running_process_stops_its_cli(service, owner_key):
    from jobs.models import Job
    from jobs.process_api.services import process_uuid

    with service.client(owner_key) as client:
        pid = start(client, slow_prompt(words=200, pause=0.3))
        wait_status(client, pid, {"running"})
        deadline = time.monotonic() + 30
        cli_pid = None
        while cli_pid is None and time.monotonic() < deadline:
            cli_pid = Job.objects.filter(pk=process_uuid(pid)).values_list("cli_pid", flat=True).first()
            time.sleep(0.1)
        response = client.delete(f"{BASE}/processes/{pid}")
        assert response.status_code == 200
        assert response.json()["data"]["message"] == "Process cancelled successfully"
        data = wait_status(client, pid, FINAL)
        assert data["status"] == "cancelled"
        again = client.delete(f"{BASE}/processes/{pid}")
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "PROCESS_ALREADY_COMPLETED"
    assert cli_pid
    with pytest.raises(ProcessLookupError):
        os.kill(cli_pid, 0)


def test_processes_page_and_feed_the_metrics(service, owner_key):
    from jobs.models import Job

    prompts = [f"Metric {i} [[slow:0.05]]" + " word" * (i * 8) for i in range(4)] + ["Broken [[error:400]]"]
    with service.client(owner_key) as client:
        pids = [start(client, prompt) for prompt in prompts]
        for pid in pids:
            wait_status(client, pid, FINAL)
        page = client.get(f"{BASE}/processes", params={"page": 3, "pageSize": 2}).json()["data"]
        assert page["total"] == 5 and page["pagination"] == {"page": 3, "pageSize": 2, "totalPages": 3}
        assert [p["processId"] for p in page["processes"]] == [pids[0]]
        failed = client.get(f"{BASE}/processes", params={"status": "failed"}).json()["data"]
        assert [p["processId"] for p in failed["processes"]] == [pids[-1]]
        response = client.get(
            f"{BASE}/metrics", params={"periodSeconds": 3600, "includeRecent": "true", "recentLimit": 10}
        )
    assert response.status_code == 200
    data = response.json()["data"]
    durations = sorted(Job.objects.filter(finished_at__isnull=False).values_list("duration_ms", flat=True))
    assert (data["totalProcesses"], data["successfulProcesses"], data["failedProcesses"]) == (5, 4, 1)
    assert data["successRate"] == 0.8
    assert (data["minDurationMs"], data["maxDurationMs"]) == (durations[0], durations[-1])
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    assert (data["p95DurationMs"], data["p99DurationMs"]) == (round(cuts[94]), round(cuts[98]))
    assert durations[0] < data["p95DurationMs"] <= data["p99DurationMs"] <= durations[-1]
    recent = data["recentMetrics"]
    newest_first = [
        f"claude_{pk.hex}" for pk in Job.objects.order_by("-finished_at").values_list("pk", flat=True)
    ]
    assert [r["processId"] for r in recent] == newest_first
    for metric in recent:
        assert metric["peakMemoryBytes"] > 10_000_000, metric
        assert metric["cpuTimeMs"] > 0
        assert metric["inputSize"] == len(prompts[pids.index(metric["processId"])])
    assert {m["success"] for m in recent} == {True, False}


def test_a_process_reads_the_working_directory_it_was_given(service, owner_key):
    project = Path(service.env["PROCESS_ALLOWED_WORKDIRS"]) / "demo"
    project.mkdir(exist_ok=True)
    (project / "README.txt").write_text("PROJECT-README-CONTENT")
    with service.client(owner_key) as client:
        refused = client.post(f"{BASE}/execute/async", json={"prompt": "hi", "workingDirectory": "/etc"})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "workingDirectory"
        response = client.post(
            f"{BASE}/execute",
            json={"prompt": '[[tool:Read {"file_path": "README.txt"}]]', "workingDirectory": str(project)},
        )
    data = response.json()["data"]
    assert data["status"] == "completed"
    assert "PROJECT-README-CONTENT" in data["stdout"]


# -- WebSocket ----------------------------------------------------------------------------------


def ws_url(service) -> str:
    return service.url.replace("http://", "ws://") + f"{BASE}/ws"


@contextlib.contextmanager
def ws_open(service, owner_key):
    with ws_connect(
        ws_url(service), subprotocols=["claudesvc.v1", f"bearer.{owner_key.secret}"], origin=service.url
    ) as ws:
        assert ws.subprotocol == "claudesvc.v1"
        assert json.loads(ws.recv(timeout=10))["event"] == "claude:authenticated"
        yield ws


def ws_until(ws, event: str, timeout: float = 90) -> list[tuple[float, dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
        seen.append((time.monotonic(), message))
        if message["event"] == event:
            return seen


def test_a_websocket_client_executes_and_streams(service, owner_key):
    words = " ".join(f"w{i}" for i in range(12))
    with ws_open(service, owner_key) as ws:
        ws.send(
            json.dumps({"event": "claude:execute", "data": {"prompt": f"[[slow:0.25]][[reply:{words}]]"}})
        )
        messages = ws_until(ws, "claude:complete")
    outputs = [
        (t, m["data"]["output"])
        for t, m in messages
        if m["event"] == "claude:progress" and m["data"]["output"]
    ]
    complete_at, complete = messages[-1]
    assert complete["data"]["status"] == "completed"
    assert "".join(text for _, text in outputs) == words == complete["data"]["result"]["stdout"]
    assert len(outputs) == 12
    # Streamed as generated: the first words arrived well before the answer was complete.
    assert complete_at - outputs[0][0] > 1.5


def test_a_websocket_client_cancels_its_process(service, owner_key):
    with ws_open(service, owner_key) as ws:
        ws.send(
            json.dumps({"event": "claude:execute", "data": {"prompt": slow_prompt(words=200, pause=0.3)}})
        )
        first = json.loads(ws.recv(timeout=10))
        pid = first["data"]["processId"]
        while True:  # until the CLI is producing output
            message = json.loads(ws.recv(timeout=60))
            if message["event"] == "claude:progress" and message["data"]["output"]:
                break
        ws.send(json.dumps({"event": "claude:cancel", "data": pid, "requestId": "cancel-1"}))
        messages = ws_until(ws, "claude:complete")
    assert any(m.get("requestId") == "cancel-1" for _, m in messages)
    assert messages[-1][1]["data"] == {**messages[-1][1]["data"], "processId": pid, "status": "cancelled"}


def test_a_websocket_with_a_bad_token_is_closed_with_1008(service):
    with ws_connect(
        ws_url(service), subprotocols=["claudesvc.v1", "bearer.csk_live_" + "z" * 32], origin=service.url
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["data"]["code"] == "UNAUTHORIZED"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008, service.logs()
