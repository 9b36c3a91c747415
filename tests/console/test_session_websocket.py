"""The Process API WebSocket for a page of this origin: the session cookie of a
console sign-in authenticates it, and is checked again on every message."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from claudesvc.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "/api/v1/claude/ws"


def signed_in_cookie() -> tuple[Client, str]:
    user = get_user_model().objects.create_user("lin", password="irrelevant password")
    client = Client()
    client.force_login(user)
    return client, client.cookies[settings.SESSION_COOKIE_NAME].value


def socket(cookie: str | None, origin: bytes = b"http://testserver") -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, URL, headers=headers)


async def test_the_session_cookie_authenticates_and_signing_out_ends_it():
    client, cookie = await sync_to_async(signed_in_cookie)()
    ws = socket(cookie)
    connected, _ = await ws.connect()
    assert connected
    hello = await ws.receive_json_from(timeout=10)
    # A user is named as /auth/login names them (claudesvc.auth.owner_label).
    assert hello["event"] == "claude:authenticated" and hello["data"]["userId"] == "lin"
    await ws.send_json_to({"event": "claude:status", "data": "claude_" + "0" * 32})
    answer = await ws.receive_json_from(timeout=10)
    assert answer["event"] == "claude:error" and answer["data"]["code"] == "NOT_FOUND"
    # Signing out deletes the session: the open socket stops working.
    await sync_to_async(client.logout)()
    await ws.send_json_to({"event": "claude:status", "data": "claude_" + "0" * 32})
    refused = await ws.receive_json_from(timeout=10)
    assert refused["event"] == "claude:error" and refused["data"]["code"] == "UNAUTHORIZED"
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": 1008}


async def test_without_a_session_the_socket_still_waits_for_a_credential(settings):
    settings.WS_AUTH_TIMEOUT_SECONDS = 1
    ws = socket("not-a-session")
    connected, _ = await ws.connect()
    assert connected
    error = await ws.receive_json_from(timeout=10)
    assert error["event"] == "claude:error" and error["data"]["code"] == "UNAUTHORIZED"


async def test_a_page_of_another_origin_cannot_use_the_cookie():
    _, cookie = await sync_to_async(signed_in_cookie)()
    connected, _ = await socket(cookie, origin=b"https://evil.example").connect()
    assert not connected
