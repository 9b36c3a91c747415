"""The Process API's WebSocket face against the real ASGI application
(origin check, routing, consumer), with the real CLI run by the runner."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections

from apikeys.services import api_key_create
from claudesvc.asgi import application
from claudesvc.auth import Caller
from jobs import runner
from jobs.models import Job, JobStatus
from jobs.process_api.services import process_create, process_id, process_uuid
from jobs.queue import job_claim_next

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "/api/v1/claude/ws"
ORIGIN = [(b"origin", b"http://testserver"), (b"host", b"testserver")]


def communicator(*, subprotocols=None, headers=ORIGIN) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, URL, headers=headers, subprotocols=subprotocols)


async def connect(secret: str) -> WebsocketCommunicator:
    ws = communicator(subprotocols=["claudesvc.v1", f"bearer.{secret}"])
    connected, subprotocol = await ws.connect()
    assert connected and subprotocol == "claudesvc.v1"
    assert (await ws.receive_json_from())["event"] == "claude:authenticated"
    return ws


async def send(ws, event: str, data, request_id: str | None = None) -> None:
    message = {"event": event, "data": data}
    if request_id:
        message["requestId"] = request_id
    await ws.send_json_to(message)


async def receive_until(ws, event: str, timeout: float = 60) -> list[dict]:
    seen = []
    while True:
        message = await ws.receive_json_from(timeout=timeout)
        seen.append(message)
        if message["event"] == event:
            return seen


async def expect_closed_unauthorized(ws, code: int = 1008) -> dict:
    error = await ws.receive_json_from(timeout=10)
    assert error["event"] == "claude:error" and error["data"]["code"] == "UNAUTHORIZED"
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": code}
    return error


def run_next_job_in_a_thread() -> threading.Thread:
    def work():
        try:
            job = job_claim_next()
            if job:
                runner.run_job(job.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


# -- connecting and authenticating ---------------------------------------------------------


async def test_a_connection_from_another_site_is_refused(owner_key):
    ws = communicator(
        subprotocols=["claudesvc.v1", f"bearer.{owner_key.secret}"],
        headers=[(b"origin", b"https://evil.example")],
    )
    connected, _ = await ws.connect()
    assert not connected


async def test_the_credential_subprotocol_authenticates_and_is_never_echoed(owner_key):
    ws = communicator(subprotocols=["claudesvc.v1", f"bearer.{owner_key.secret}"])
    connected, subprotocol = await ws.connect()
    assert connected and subprotocol == "claudesvc.v1"
    hello = await ws.receive_json_from()
    assert (
        hello["event"] == "claude:authenticated" and hello["data"]["userId"] == f"key:{owner_key.row.prefix}"
    )
    await ws.disconnect()


async def test_a_jwt_user_is_named_as_the_login_names_them(jwt_user):
    ws = communicator(subprotocols=["claudesvc.v1", f"bearer.{jwt_user.token}"])
    connected, _ = await ws.connect()
    assert connected
    hello = await ws.receive_json_from(timeout=10)
    assert hello == {"event": "claude:authenticated", "data": {"userId": "demo"}}
    await ws.disconnect()


async def test_a_header_authenticates_clients_that_can_send_one(owner_key):
    ws = communicator(headers=[*ORIGIN, (b"x-api-key", owner_key.secret.encode())])
    connected, _ = await ws.connect()
    assert connected
    assert (await ws.receive_json_from())["event"] == "claude:authenticated"
    await ws.disconnect()


async def test_a_bad_credential_closes_with_1008():
    ws = communicator(subprotocols=["claudesvc.v1", "bearer.csk_live_" + "x" * 32])
    connected, _ = await ws.connect()
    assert connected
    error = await expect_closed_unauthorized(ws)
    assert error["data"]["message"] == "Invalid or expired authentication token"


async def test_the_first_message_may_authenticate(owner_key):
    ws = communicator()
    connected, subprotocol = await ws.connect()
    assert connected and subprotocol is None
    await send(ws, "auth", {"token": owner_key.secret})
    assert (await ws.receive_json_from())["event"] == "claude:authenticated"
    await send(ws, "claude:status", "claude_" + "0" * 32, request_id="r1")
    error = await ws.receive_json_from()
    assert error == {
        "event": "claude:error",
        "data": {"code": "NOT_FOUND", "message": "Process not found", "processId": "claude_" + "0" * 32},
        "requestId": "r1",
    }
    await ws.disconnect()


@pytest.mark.parametrize(
    "first",
    [
        {"event": "claude:execute", "data": {"prompt": "hi"}},
        {"event": "auth", "data": {}},
        {"event": "auth", "data": {"token": "csk_live_" + "y" * 32}},
        "not json",
    ],
)
async def test_anything_else_first_closes_with_1008(first):
    ws = communicator()
    await ws.connect()
    if isinstance(first, str):
        await ws.send_to(text_data=first)
    else:
        await ws.send_json_to(first)
    await expect_closed_unauthorized(ws)
    assert not await sync_to_async(Job.objects.exists)()


async def test_a_key_revoked_while_connected_stops_working(owner_key):
    from apikeys.services import api_key_revoke

    ws = await connect(owner_key.secret)
    row = owner_key.row
    await sync_to_async(api_key_revoke)(key=row)
    await send(ws, "claude:execute", {"prompt": "after revocation"})
    await expect_closed_unauthorized(ws)
    assert not await sync_to_async(Job.objects.exists)()


async def test_silence_closes_the_connection_after_the_auth_timeout(settings):
    settings.WS_AUTH_TIMEOUT_SECONDS = 1
    ws = communicator()
    await ws.connect()
    error = await expect_closed_unauthorized(ws, code=1008)
    assert "in time" in error["data"]["message"]


# -- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "maxTokens": 0}, "maxTokens"),
        ({"prompt": "hi", "timeoutMs": 500}, "timeoutMs"),
        ({"prompt": "hi", "priority": 101}, "priority"),
        ({"prompt": "hi", "systemPrompt": "s" * 10_001}, "systemPrompt"),
        ({"prompt": "hi", "model": "gpt-4"}, "model"),
        ({"prompt": "hi", "workingDirectory": "/etc"}, "workingDirectory"),
        ("just a string", "data"),
    ],
)
async def test_execute_validates_like_the_http_api(owner_key, data, field):
    ws = await connect(owner_key.secret)
    await send(ws, "claude:execute", data, request_id="x1")
    error = await ws.receive_json_from()
    assert error["event"] == "claude:error" and error["requestId"] == "x1"
    assert (error["data"]["code"], error["data"]["field"]) == ("VALIDATION_ERROR", field)
    assert not await sync_to_async(Job.objects.exists)()
    await ws.disconnect()


async def test_unknown_events_and_bad_frames_are_errors_not_disconnects(owner_key):
    ws = await connect(owner_key.secret)
    await send(ws, "claude:fly", {})
    assert (await ws.receive_json_from())["data"]["field"] == "event"
    await ws.send_to(text_data="[1, 2]")
    assert (await ws.receive_json_from())["data"]["code"] == "VALIDATION_ERROR"
    await send(ws, "claude:status", {"nothing": 1})
    assert (await ws.receive_json_from())["data"]["field"] == "processId"
    await ws.disconnect()


async def test_execute_streams_progress_and_completes(owner_key, upstream):
    ws = await connect(owner_key.secret)
    await send(ws, "claude:execute", {"prompt": "Stream [[reply:alpha beta gamma delta]]"}, request_id="e1")
    started = await ws.receive_json_from()
    assert started["event"] == "claude:progress" and started["requestId"] == "e1"
    assert started["data"]["status"] == "pending" and started["data"]["type"] == "status"
    pid = started["data"]["processId"]
    job = await sync_to_async(Job.objects.get)(pk=process_uuid(pid))
    assert job.options["partial_messages"] is True
    thread = run_next_job_in_a_thread()
    messages = await receive_until(ws, "claude:complete")
    await asyncio.to_thread(thread.join, 60)
    progress = [m["data"] for m in messages if m["event"] == "claude:progress"]
    assert progress[0] == {"processId": pid, "status": "running", "type": "status", "output": ""}
    outputs = [p["output"] for p in progress if p["type"] == "output"]
    assert len(outputs) == 4 and "".join(outputs) == "alpha beta gamma delta"
    complete = messages[-1]
    assert complete["requestId"] == "e1"
    assert complete["data"]["status"] == "completed"
    assert complete["data"]["result"]["stdout"] == "alpha beta gamma delta"
    assert complete["data"]["result"]["parsedResponse"]["usage"]["outputTokens"] > 0
    await send(ws, "claude:status", {"processId": pid})
    status = await ws.receive_json_from()
    assert status["event"] == "claude:status" and status["data"]["result"]["exitCode"] == 0
    await ws.disconnect()


async def test_cancel_ends_a_process_and_reports_it(owner_key):
    ws = await connect(owner_key.secret)
    await send(ws, "claude:execute", {"prompt": "never runs"})
    pid = (await ws.receive_json_from())["data"]["processId"]
    await send(ws, "claude:cancel", pid, request_id="c1")
    messages = await receive_until(ws, "claude:complete")
    ack = next(m for m in messages if m.get("requestId") == "c1")
    assert ack["data"]["message"] == "Process cancelled successfully"
    assert messages[-1]["data"]["status"] == "cancelled"
    await send(ws, "claude:cancel", pid)
    error = await ws.receive_json_from()
    assert error["data"]["code"] == "PROCESS_ALREADY_COMPLETED" and error["data"]["processId"] == pid
    await ws.disconnect()


async def test_a_client_never_hears_about_another_callers_process(owner_key, other_key):
    other_row, other_secret = other_key.row, other_key.secret
    theirs = await sync_to_async(process_create)(caller=Caller(api_key=other_row), prompt="private")
    ws = await connect(owner_key.secret)
    for event in ("claude:status", "claude:cancel"):
        await send(ws, event, process_id(theirs))
        error = await ws.receive_json_from()
        assert error["event"] == "claude:error" and error["data"]["code"] == "NOT_FOUND"
    assert (await sync_to_async(Job.objects.get)(pk=theirs.pk)).status == JobStatus.PENDING
    # The owner, on a connection of their own, hears about it.
    own = await connect(other_secret)
    await send(own, "claude:status", process_id(theirs))
    assert (await own.receive_json_from())["data"]["status"] == "pending"
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()
    await own.disconnect()


async def test_messages_are_json_objects_with_event_and_data(owner_key):
    ws = await connect(owner_key.secret)
    await ws.send_to(text_data=json.dumps({"event": "claude:status", "data": "claude_nope"}))
    raw = await ws.receive_from()
    assert set(json.loads(raw)) == {"event", "data"}
    await ws.disconnect()


async def test_execute_over_the_socket_spends_the_execute_rate_limit(settings):
    from django.core.cache import cache

    from apikeys.models import RateLimitOverride

    await sync_to_async(cache.clear)()
    row, secret = await sync_to_async(api_key_create)(name="ws-limited")
    await sync_to_async(RateLimitOverride.objects.create)(
        api_key=row, group="process_execute", requests=1, window_seconds=3600
    )
    ws = await connect(secret)
    await send(ws, "claude:execute", {"prompt": "first"}, request_id="a")
    assert (await ws.receive_json_from())["event"] == "claude:progress"
    await send(ws, "claude:execute", {"prompt": "second"}, request_id="b")
    while True:
        message = await ws.receive_json_from(timeout=30)
        if message.get("requestId") == "b":
            break
    assert message["event"] == "claude:error"
    assert message["data"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert await sync_to_async(Job.objects.filter(api_key=row).count)() == 1
    await ws.disconnect()
