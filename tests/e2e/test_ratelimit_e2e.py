"""Rate limits hold exactly under concurrent requests, against the live server."""

from __future__ import annotations

import subprocess
import threading

import httpx
import pytest
from django.conf import settings

from apikeys.models import RateLimitOverride
from apikeys.services import api_key_create
from claudesvc.management.commands.serve import asgi_server_command
from tests.conftest import Key
from tests.e2e.conftest import ROOT, _free_port, wait_until_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A long window, so the counter cannot roll over while the test runs.
WINDOW = 86400


def fire(urls: list[str], secret: str, total: int) -> list[int]:
    """``total`` GET requests released at the same instant, spread over ``urls``."""
    barrier = threading.Barrier(total)
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            status = client.get(f"{urls[i % len(urls)]}/jobs", headers={"X-API-Key": secret}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(total)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def limited_key(requests: int) -> Key:
    key = Key(*api_key_create(name="burst"))
    RateLimitOverride.objects.create(api_key=key.row, group="jobs", requests=requests, window_seconds=WINDOW)
    return key


def test_exactly_the_limit_gets_through_100_simultaneous_requests(service):
    key = limited_key(60)
    statuses = fire([service.url], key.secret, 100)
    assert sorted(set(statuses)) == [200, 429], service.logs()
    assert statuses.count(200) == 60
    assert statuses.count(429) == 40


@pytest.mark.skipif(not settings.REDIS_URL, reason="counters are shared across processes only through Redis")
def test_the_limit_holds_across_several_server_processes(service):
    port = _free_port()
    second = subprocess.Popen(
        asgi_server_command("127.0.0.1", port),
        cwd=ROOT,
        env=service.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        other = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(other), "second server did not start"
        key = limited_key(60)
        statuses = fire([service.url, other], key.secret, 100)
        assert statuses.count(200) == 60
        assert statuses.count(429) == 40
    finally:
        second.terminate()
        second.wait(20)
