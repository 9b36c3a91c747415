"""``manage.py serve``: the service's processes under one supervisor.

- ``serve``: uvicorn (HTTP + WebSocket) and a django-q2 worker cluster side by
  side, the embedded deployment (``make run``);
- ``serve --web-only`` (or ``--no-worker``): only uvicorn, for the web hosts of
  a scale-out deployment;
- ``serve --worker-only``: only the worker cluster, for its worker hosts.

Ctrl-C or SIGTERM stops everything gracefully: uvicorn finishes its requests
and the workers their jobs within ``SHUTDOWN_GRACE_SECONDS``, then the CLIs
are stopped and the jobs end with a reason naming the shutdown (see
``jobs.worker``). Whatever is still alive ``SHUTDOWN_GRACE_SECONDS + 4``
seconds after the signal is killed, CLIs included: ``serve`` is a child
subreaper, so even processes whose parent died stay in its tree. If one
child dies the others are stopped too, so a supervisor (make run, Docker)
never keeps half a service running. If ``serve`` itself is killed, its
children get SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and stop the same
graceful way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the rest still applies
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when ``serve`` dies, whichever way."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def asgi_server_command(host: str, port: int) -> list[str]:
    """The HTTP/WebSocket server: uvicorn.

    Not daphne: daphne hands a request body to the application all at once
    (django/daphne#483), so a 200 MB upload grew its memory by 2.6 GB
    (bench/upload_memory.py). uvicorn passes the body on as it arrives, with
    flow control, and Django spools it to disk. Django's ASGI handler has no
    lifespan support, hence ``--lifespan off``. On SIGTERM uvicorn stops
    accepting and gives open requests (streams included, whose clients resume
    by Last-Event-ID or offset elsewhere) ``SHUTDOWN_GRACE_SECONDS``.
    """
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "claudesvc.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--ws",
        "websockets-sansio",
        "--timeout-graceful-shutdown",
        str(settings.SHUTDOWN_GRACE_SECONDS),
    ]


def worker_command() -> list[str]:
    """The worker cluster: claudesvc's ``qcluster`` (graceful stop, see that command)."""
    return [sys.executable, "-m", "django", "qcluster"]


class Command(BaseCommand):
    help = (
        "Serve HTTP and WebSocket with uvicorn and run a django-q2 worker cluster beside it "
        "(--web-only / --worker-only for one of the two)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--web-only",
            "--no-worker",
            dest="web_only",
            action="store_true",
            help="Serve only; workers run elsewhere",
        )
        parser.add_argument(
            "--worker-only", action="store_true", help="Run only the worker cluster; no HTTP server"
        )

    def handle(self, *args, host: str, port: int, web_only: bool, worker_only: bool, **options):
        if web_only and worker_only:
            raise CommandError("--web-only and --worker-only exclude each other")
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "claudesvc.settings"}
        commands = {}
        if not worker_only:
            commands["web"] = asgi_server_command(host, port)
        if not web_only:
            commands["worker"] = worker_command()
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        # Own sessions: a Ctrl-C in the terminal reaches serve alone, which stops
        # the children in order instead of each of them racing on its own.
        children = {
            name: subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
            for name, cmd in commands.items()
        }
        if "web" in children:
            self.stdout.write(f"claudesvc serving on http://{host}:{port}/ (Ctrl-C stops)")
        if "worker" in children:
            self.stdout.write(f"claudesvc worker cluster started ({settings.JOB_WORKERS} workers)")
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"{name} exited with {child.returncode}; stopping")
                    exit_code = child.returncode or 1
                    stopping = True
            self._reap_orphans(children)
            time.sleep(0.3)
        code = self._stop_all(children) or exit_code
        # Everything is down. Exit at once: the interpreter's own teardown was
        # seen to take seconds on a busy machine, and a supervisor waits for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _stop_all(self, children: dict[str, subprocess.Popen]) -> int:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.SHUTDOWN_GRACE_SECONDS + 4
        seen: dict[int, float] = {}
        while time.monotonic() < deadline:
            alive = self._descendants()
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    seen.setdefault(proc.pid, proc.create_time())
            self._reap_orphans(children)
            if not alive and all(c.poll() is not None for c in children.values()):
                return 0
            time.sleep(0.1)
        left = self._descendants()
        names = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                names.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        self.stderr.write(f"still running after the grace period, killed: {'; '.join(names)}")
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for pid, created in seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    proc.kill()
        for child in children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)
        self._reap_orphans(children)
        return 1

    @staticmethod
    def _descendants() -> list[psutil.Process]:
        try:
            procs = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    @staticmethod
    def _reap_orphans(children: dict[str, subprocess.Popen]) -> None:
        """As a subreaper, serve inherits orphans: wait for those that ended
        (not for its own children, whose exit codes ``Popen`` reads)."""
        own = {c.pid for c in children.values()}
        try:
            procs = psutil.Process().children()
        except psutil.Error:
            return
        for proc in procs:
            if proc.pid in own:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
                if proc.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(proc.pid, os.WNOHANG)
