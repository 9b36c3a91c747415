"""``manage.py serve``: the embedded deployment in one command.

Starts uvicorn (HTTP + WebSocket) and a django-q2 cluster side by side; Ctrl-C
or SIGTERM stops both, and if either dies the other is stopped too, so a
supervisor (make run, Docker) never keeps half a service running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand


def asgi_server_command(host: str, port: int) -> list[str]:
    """The HTTP/WebSocket server: uvicorn.

    Not daphne: daphne hands a request body to the application all at once
    (django/daphne#483), so a 200 MB upload grew its memory by 2.6 GB
    (bench/upload_memory.py). uvicorn passes the body on as it arrives, with
    flow control, and Django spools it to disk. Django's ASGI handler has no
    lifespan support, hence ``--lifespan off``.
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
    ]


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with uvicorn and run a django-q2 worker cluster beside it."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="Serve only; run workers elsewhere")

    def handle(self, *args, host: str, port: int, no_worker: bool, **options):
        python = sys.executable
        children = [subprocess.Popen(asgi_server_command(host, port))]
        if not no_worker:
            children.append(
                subprocess.Popen(
                    [python, "-m", "django", "qcluster"],
                    env={**os.environ, "DJANGO_SETTINGS_MODULE": "claudesvc.settings"},
                )
            )
        self.stdout.write(f"claudesvc serving on http://{host}:{port}/ (Ctrl-C stops)")
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    self.stderr.write(f"{child.args[2]} exited with {child.returncode}; stopping")
                    exit_code = child.returncode or 1
                    stopping = True
            time.sleep(0.3)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(exit_code)
