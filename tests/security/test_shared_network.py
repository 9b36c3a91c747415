"""What a CLI can reach over the network it shares with the host (README, security model).

A ``trusted`` key's shell runs in the sandbox but on the host's network: it can
open a connection to any service listening on this machine, Redis and
PostgreSQL included. Redis and PostgreSQL should require a password the CLI
never gets; these tests show what still holds against a client of an open
Redis: it cannot make the service unpickle a value, read the events a push
carries, slip events into another job's stream, or speak for a WebSocket
client. The first test shows the reach itself, with the real CLI in the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import socket
import uuid
from collections.abc import Iterator

import msgpack
import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

from jobs import progress, wakeup
from jobs.models import Job, JobStatus
from jobs.progress import JobProgress, job_group
from jobs.streaming import Ended, follow_job
from tests.jobs.test_process_consumers import connect
from tests.security.conftest import bash, run_job, token, tool_results

pytestmark = pytest.mark.django_db(transaction=True)

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="the scale-out setup's Redis")


def _redis() -> redis.Redis:
    """A client of the Redis server as any process on this host can be one."""
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.mark.usefixtures("upstream", "bwrap_on")
def test_a_trusted_shell_in_the_sandbox_reaches_the_hosts_loopback():
    """What the rest of this file assumes: the sandbox does not cut the network."""
    with listening_socket() as port:
        probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('REACHED')\""
        job = run_job(bash(probe), policy="trusted")
    assert job.status == JobStatus.COMPLETED, job.error_message
    assert "REACHED" in tool_results(job)


@contextlib.contextmanager
def listening_socket() -> Iterator[int]:
    """A listening TCP socket on 127.0.0.1 for the block's lifetime (a stand-in for Redis); its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


class _Marker:
    """Unpickling it creates ``path``: proof that a planted value was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


@needs_redis
def test_a_value_planted_in_the_cache_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    key = f"login-fail:user:{uuid.uuid4().hex}:0"
    _redis().set(cache.make_key(key), pickle.dumps(_Marker(str(marker))), ex=60)
    with pytest.raises(ValueError):  # JSON's decoding error: the value is refused
        cache.get(key)
    assert not marker.exists()
    # What the service itself writes still reads back.
    cache.set(key, 3, timeout=60)
    assert cache.get(key) == 3
    cache.set(key, [1.5, 2.5], timeout=60)
    assert cache.get(key) == [1.5, 2.5]


async def _running_job() -> Job:
    from apikeys.services import api_key_create
    from claudesvc.auth import Caller
    from jobs.services import job_create

    key, _ = await sync_to_async(api_key_create)(name=token("net"))
    job = await sync_to_async(job_create)(caller=Caller(api_key=key), prompt="hi", enqueue=False)
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.RUNNING)
    return job


def _group_channel(job_id) -> str:
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{job_group(job_id)}"


@needs_redis
async def test_a_push_carries_no_event_a_redis_client_can_read():
    job = await _running_job()
    secret = token("event-text")
    listener = _redis().pubsub()
    listener.subscribe(_group_channel(job.pk))
    listener.get_message(timeout=1)  # the subscription's confirmation
    writer = JobProgress(job.pk).writer()
    await writer.put("stream_event", {"text": secret})
    await writer.flush()
    raw = None
    for _ in range(50):
        message = listener.get_message(timeout=0.1)
        if message and message["type"] == "message":
            raw = message["data"]
            break
    listener.close()
    assert raw is not None, "the push should have been published"
    assert secret.encode() not in raw
    # The service's own readers decrypt it.
    pushed = get_channel_layer().deserialize(raw)
    assert pushed["events"] == [[0, "stream_event", {"text": secret}]]


def _claim(job_id, text: str) -> dict:
    """A push in the service's own format claiming ``text`` as the job's first event."""
    return {
        "type": "job.event",
        "job": str(job_id),
        "seq": 0,
        "status_unchanged": True,
        "events": [[0, "stream_event", {"text": text}]],
    }


async def _followed_to_the_end(job: Job, send_forgeries) -> list:
    """What a reader of ``job`` got: forgeries sent once it follows, then one real event and
    the job's end."""
    seen: list = []

    async def follow() -> None:
        async for item in follow_job(job.pk):
            seen.append(item)
            if isinstance(item, Ended):
                return

    reader = asyncio.create_task(follow())
    await asyncio.sleep(0.5)  # subscribed, its first read done
    await sync_to_async(send_forgeries)()
    await asyncio.sleep(0.5)
    writer = JobProgress(job.pk).writer()
    await writer.put("stream_event", {"text": "real"})
    await writer.flush()
    await Job.objects.filter(pk=job.pk).aupdate(status=JobStatus.COMPLETED)
    await progress.ajob_ended_push(job.pk)
    await asyncio.wait_for(reader, timeout=30)
    assert isinstance(seen[-1], Ended) and seen[-1].status == JobStatus.COMPLETED
    return [item.data for item in seen[:-1]]


@needs_redis
async def test_forged_and_replayed_pushes_put_nothing_into_a_jobs_stream(settings):
    settings.STREAM_POLL_MS = 600_000  # only pushes wake the reader within the test's time
    job, other = await _running_job(), await _running_job()

    def send() -> None:
        client = _redis()
        # In the layer's own format but not encrypted.
        client.publish(_group_channel(job.pk), msgpack.packb(_claim(job.pk, token("forged"))))
        # A genuine push of another job (as a listener could capture one), sent on this job's channel.
        replayed = get_channel_layer().serialize(_claim(other.pk, token("replayed")))
        client.publish(_group_channel(job.pk), replayed)

    assert await _followed_to_the_end(job, send) == [{"text": "real"}]


@pytest.mark.skipif(bool(settings.REDIS_URL) or not wakeup.SUPPORTED, reason="the embedded setup's bells")
async def test_unsigned_and_foreign_rings_put_nothing_into_a_jobs_stream(settings):
    """A job's bell is an abstract Unix socket, which any process of the host can send to (a
    CLI shares the host's network namespace, where they live)."""
    settings.STREAM_POLL_MS = 600_000
    job, other = await _running_job(), await _running_job()

    def send() -> None:
        wakeup.ring(progress.job_bells(job.pk), json.dumps(_claim(job.pk, token("forged"))).encode())
        foreign = wakeup.payload_signed(json.dumps(_claim(other.pk, token("another job's"))).encode())
        wakeup.ring(progress.job_bells(job.pk), foreign)

    assert await _followed_to_the_end(job, send) == [{"text": "real"}]


def _specific_channels() -> set[bytes]:
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    return set(_redis().pubsub_channels(f"{prefix}specific.*"))


@needs_redis
async def test_a_websocket_connection_takes_no_message_from_the_channel_layer(owner_key):
    """Channels would dispatch a message on a consumer's own channel by its type: a published
    ``websocket.receive`` would act as the connection's client. The consumer has no channel."""
    before = await sync_to_async(_specific_channels)()
    ws = await connect(owner_key.secret)
    try:
        assert await sync_to_async(_specific_channels)() == before
    finally:
        await ws.disconnect()


@needs_redis
async def test_a_flood_of_forged_pushes_is_logged_once_a_minute(settings, caplog):
    """Whoever can publish forged messages can publish many: they must not fill the logs."""
    settings.STREAM_POLL_MS = 600_000
    job = await _running_job()

    def send() -> None:
        client = _redis()
        for _ in range(20):
            client.publish(_group_channel(job.pk), msgpack.packb(_claim(job.pk, token("forged"))))

    with caplog.at_level(logging.WARNING, logger="jobs.streaming"):
        assert await _followed_to_the_end(job, send) == [{"text": "real"}]
    assert len([r for r in caplog.records if "did not decrypt" in r.getMessage()]) <= 1
