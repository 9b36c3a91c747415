"""Wake-ups between the processes of one machine, for the embedded setup.

In the embedded deployment (SQLite, django-q2's ORM broker, no Redis) the web
server and the workers are separate processes with nothing to push through:
the broker's pusher polls its table every ``Q_CLUSTER["poll"]`` seconds and a
streaming reader polls the events table every ``STREAM_POLL_MS``, which adds
on average half of each interval to every job and every event.

A *bell* closes that gap: a process that waits binds a Unix datagram socket
and registers it as a file in a folder under ``VAR_DIR/run/``; a process with
news rings the folder, that is sends a datagram to every socket registered
there. The waiter wakes at once and reads the table as before. The rows stay
the truth and the poll stays as the fallback, so a lost ring (a full socket
buffer, a bell on another host, a platform without abstract sockets) only
costs the old delay.

A ring may carry a payload (``ring(folder, payload)``, up to ``PAYLOAD_MAX``
bytes; ``Bell.receive`` returns them): a job's events, which its readers then
need not read from the table (``jobs.progress``, ``jobs.streaming``). Any
process of the host can send to an abstract socket, a job's CLI included (it
shares the host's network namespace), so a payload is signed
(``payload_signed``) and a reader takes only what ``payload_verified`` accepts.

Uses:

- ``BrokerBell`` (``Q_CLUSTER["broker_class"]`` in the embedded setup): every
  enqueue rings the cluster's pusher, which waits on its bell instead of
  sleeping ``poll``;
- ``jobs.streaming.follow_job`` waits on a bell of its job's folder, which
  ``jobs.progress`` rings after each event it writes and when the job ends;
- ``HolderDoorbell``: the poller of a worker holding live session CLIs
  (``jobs.live``) waits on a bell of its own, which the web rings
  (``holder_ring``) once it has committed a turn of a session that worker
  holds. This one is not only for the embedded setup: with Redis (workers
  possibly on other hosts) the ring is a ``PUBLISH`` on a channel of the
  worker's, which its poller subscribes to.

Sockets live in Linux's abstract namespace (no path length limit, gone with
their process); the registry file only names them. Elsewhere nothing rings and
everything polls, as before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.utils.crypto import salted_hmac
from django_q.brokers.orm import ORM
from django_q.conf import Conf

logger = logging.getLogger(__name__)

SUPPORTED = sys.platform.startswith("linux")

# The largest payload a ring carries, signature included; a bigger one rings without it.
PAYLOAD_MAX = 64 * 1024
_SIGNATURE = 32  # bytes of HMAC-SHA256
# The most data a signed payload can hold.
PAYLOAD_DATA_MAX = PAYLOAD_MAX - _SIGNATURE


def bells_root() -> Path:
    """Where this deployment's bells are registered (one folder per cluster name)."""
    return Path(settings.VAR_DIR) / "run" / f"bells-{settings.Q_CLUSTER_NAME}"


def _address(folder: Path, name: str) -> str:
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:20]
    return f"\0claudesvc-bell/{digest}/{name}"


class Bell:
    """One waiter's socket, registered in ``folder`` until ``close()``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(_address(folder, self.name))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.name).touch()
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[bytes]:
        """Read every ring waiting: their payloads, in order (``b"!"`` for a ring without one)."""
        payloads = []
        while True:
            try:
                payloads.append(self.sock.recv(PAYLOAD_MAX))
            except (BlockingIOError, InterruptedError):
                return payloads
            except OSError:
                return payloads

    def drain(self) -> int:
        """Read every ring waiting; how many there were."""
        count = 0
        while True:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                return count
            count += 1

    def wait(self, timeout: float) -> bool:
        """Block until a ring or ``timeout`` seconds; whether it rang (the rings are consumed)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready) and self.drain() > 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            (self.folder / self.name).unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only once empty: the last waiter of a job tidies up
        self.sock.close()


def bell_open(folder: Path) -> Bell | None:
    """A bell in ``folder``, or None where bells cannot work (then the caller polls)."""
    if not SUPPORTED:
        return None
    try:
        return Bell(folder)
    except OSError:
        logger.debug("no bell in %s; polling instead", folder, exc_info=True)
        return None


_sender: socket.socket | None = None


def payload_signed(data: bytes) -> bytes:
    """``data`` with a signature of this deployment's (``SECRET_KEY``) in front."""
    return salted_hmac("claudesvc.wakeup.ring", data, algorithm="sha256").digest() + data


def payload_verified(payload: bytes) -> bytes | None:
    """The data of a payload ``payload_signed`` made, or None (unsigned, forged, cut short)."""
    signature, data = payload[:_SIGNATURE], payload[_SIGNATURE:]
    expected = salted_hmac("claudesvc.wakeup.ring", data, algorithm="sha256").digest()
    return data if len(signature) == _SIGNATURE and hmac.compare_digest(signature, expected) else None


def ring(folder: Path, payload: bytes | Callable[[], bytes] = b"") -> int:
    """Wake every bell registered in ``folder``, with ``payload`` if it fits in one ring
    (``PAYLOAD_MAX``); how many were rung. Never blocks or raises. A callable payload is
    made only if a bell is registered there."""
    global _sender
    if not SUPPORTED:
        return 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0  # nobody waits
    if _sender is None:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
    rung = 0
    if names and callable(payload):
        payload = payload()
    if not names or not payload or len(payload) > PAYLOAD_MAX:
        payload = b"!"
    for name in names:
        try:
            try:
                _sender.sendto(payload, _address(folder, name))
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE or payload == b"!":
                    raise
                payload = b"!"  # too big for this host's socket buffers: the ring alone
                _sender.sendto(payload, _address(folder, name))
            rung += 1
        except (BlockingIOError, InterruptedError):
            rung += 1  # its buffer is full of rings already: it wakes anyway
        except (ConnectionRefusedError, FileNotFoundError):
            # Its process is gone without closing it (killed): forget it.
            with contextlib.suppress(OSError):
                (folder / name).unlink()
        except OSError:
            continue
    return rung


# -- the broker's pusher ----------------------------------------------------------------------


def broker_folder() -> Path:
    return bells_root() / "broker"


class BrokerBell(ORM):
    """django-q2's ORM broker, whose pusher wakes when a task is enqueued instead
    of after its next ``poll`` sleep. Messages and their locking are the ORM
    broker's own; only the empty-queue sleep and the enqueue's ring differ."""

    _bell: Bell | None = None
    _bell_pid: int | None = None

    def enqueue(self, task):
        pk = super().enqueue(task)
        ring(broker_folder())
        return pk

    def _own_bell(self) -> Bell | None:
        # Bound lazily in the process that dequeues (the cluster's pusher), never in a web process.
        if self._bell_pid != os.getpid():
            self._bell = bell_open(broker_folder())
            self._bell_pid = os.getpid()
        return self._bell

    def dequeue(self):
        bell = self._own_bell()
        if bell is not None:
            bell.drain()  # before the read: a ring after it is one the read may have missed
        tasks = self.get_connection().filter(key=self.list_key, lock__lt=self._now())[0 : Conf.BULK]
        if tasks:
            task_list = []
            for task in tasks:
                if self.get_connection().filter(id=task.id, lock=task.lock).update(lock=self.timeout(task)):
                    task_list.append((task.pk, task.payload))
                # else another cluster was faster on that task
            return task_list
        if bell is not None:
            bell.wait(Conf.POLL)
        else:
            select.select([], [], [], Conf.POLL)
        return None

    @staticmethod
    def _now():
        from django.utils import timezone

        return timezone.now()


# -- the holder of live sessions (jobs.live's poller) ------------------------------------------


def holder_folder(worker: str) -> Path:
    """Where the poller of ``worker`` (``host:pid``) registers its bell (embedded setup)."""
    return bells_root() / "live" / worker.replace("/", "_")


def holder_channel(worker: str) -> str:
    """The Redis channel the poller of ``worker`` subscribes to (scale-out)."""
    return f"{settings.Q_CLUSTER_NAME}:live:{worker}"


_redis_client = None


def _redis():
    global _redis_client
    if _redis_client is None:
        import redis

        # Short timeouts: a ring is an optimisation, never worth a request's wait.
        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _redis_client


def holder_ring(worker: str) -> None:
    """Wake the poller of ``worker``: a turn of a session it holds waits (call after commit).

    Never raises: a lost ring costs the poller's fallback poll (``SESSION_LIVE_POLL_MS``).
    """
    if settings.REDIS_URL:
        try:
            _redis().publish(holder_channel(worker), b"!")
        except Exception:
            logger.debug("could not ring %s's live poller", worker, exc_info=True)
        return
    ring(holder_folder(worker))


class HolderDoorbell:
    """What a worker's live session poller waits on between its fallback polls.

    A ring from the web (``holder_ring``: a bell of the worker's own in the
    embedded setup, its Redis channel with Redis) or from its own process
    (``wake``: a turn of its ended, a session's next turn may wait behind it)
    ends the wait at once. Without either transport it only sleeps. Open it
    before the worker names itself as a session's holder, so that no ring
    meant for it comes before it listens.
    """

    # How often a wait looks at its own process's wake-ups while it waits on the socket.
    SLICE = 0.05

    def __init__(self, worker: str) -> None:
        self._woken = threading.Event()
        self._bell: Bell | None = None
        self._client = None
        self._pubsub = None
        if settings.REDIS_URL:
            try:
                import redis

                # Kept: a client that is collected closes its pool, the subscription's connection too.
                self._client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(holder_channel(worker))
            except Exception:
                logger.warning("live sessions: no Redis doorbell; polling only", exc_info=True)
                self._pubsub = None
        else:
            self._bell = bell_open(holder_folder(worker))

    def wake(self) -> None:
        """End the current (or next) wait at once: from this process."""
        self._woken.set()

    def wait(self, timeout: float) -> bool:
        """Block until a ring or ``timeout`` seconds; whether it rang (the rings are consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._woken.is_set():
                self._woken.clear()
                self._drain()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step = min(remaining, self.SLICE)
            if self._bell is not None:
                if self._bell.wait(step):
                    return True
            elif self._pubsub is not None:
                if self._listen(step):
                    return True
            else:
                time.sleep(step)

    def _listen(self, timeout: float) -> bool:
        assert self._pubsub is not None
        try:
            if self._pubsub.get_message(timeout=timeout) is None:
                return False
            self._drain()
            return True
        except Exception:
            # Redis restarting: redis-py reconnects and resubscribes on the next read.
            logger.debug("live sessions: the Redis doorbell failed", exc_info=True)
            time.sleep(timeout)
            return False

    def _drain(self) -> None:
        if self._bell is not None:
            self._bell.drain()
        elif self._pubsub is not None:
            with contextlib.suppress(Exception):
                while self._pubsub.get_message(timeout=0) is not None:
                    pass

    def close(self) -> None:
        if self._bell is not None:
            self._bell.close()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
                self._client.close()
