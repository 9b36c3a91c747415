"""Upload benchmark: one large attachment to the running HTTP server.

Starts the service's HTTP server (``manage.py serve --no-worker`` by default,
or daphne for comparison) on a throw-away SQLite database, uploads one file of
``--size-mb`` MB with ``POST /jobs`` as multipart/form-data, and reports:

- the server process's peak RSS growth over its idle RSS while receiving and
  storing the upload (sampled every 20 ms);
- upload throughput, and as a ratio to a plain local copy of the same file
  (``shutil.copyfile`` on the same filesystem), so the figure means the same on
  a fast and a slow disk.

    .venv/bin/python bench/upload_memory.py               # 500 MB, the server `make run` uses
    .venv/bin/python bench/upload_memory.py --server daphne --size-mb 200
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_file(path: Path, size: int) -> None:
    """An MP4-looking file (accepted type) of incompressible bytes, written in chunks."""
    header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    with open(path, "wb") as out:
        out.write(header)
        left = size - len(header)
        while left:
            chunk = os.urandom(min(left, 8 * MB))
            out.write(chunk)
            left -= len(chunk)


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running())

    def run(self) -> None:
        while self.running:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.rss())
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--server", choices=["serve", "daphne"], default="serve")
    args = parser.parse_args()
    size = args.size_mb * MB

    with tempfile.TemporaryDirectory(prefix="claudesvc-bench-", dir=ROOT / "var") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "CLAUDESVC_VAR_DIR": str(work),
            "ATTACHMENT_MAX_BYTES": str(size + MB),
            "LOG_LEVEL": "WARNING",
        }
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        py = sys.executable
        subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        key = (
            subprocess.run(
                [py, "manage.py", "createapikey", "bench"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

        source = work / "upload.mp4"
        make_file(source, size)
        started = time.perf_counter()
        shutil.copyfile(source, work / "copy.mp4")
        copy_seconds = time.perf_counter() - started
        (work / "copy.mp4").unlink()

        port = free_port()
        if args.server == "daphne":
            cmd = [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "claudesvc.asgi:application"]
        else:
            cmd = [py, "manage.py", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
        server = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            # One small upload first, so imports and first-request set-up are not counted as growth.
            httpx.post(
                f"{url}/jobs",
                headers={"X-API-Key": key},
                data={"prompt": "warm-up"},
                files={"attachments[]": ("w.txt", b"warm", "text/plain")},
            ).raise_for_status()
            sampler = PeakRss(server.pid)
            idle = sampler.rss()
            sampler.start()
            with open(source, "rb") as body:
                started = time.perf_counter()
                response = httpx.post(
                    f"{url}/jobs",
                    headers={"X-API-Key": key},
                    data={"prompt": "Describe this video"},
                    files={"attachments[]": ("big.mp4", body, "video/mp4")},
                    timeout=600,
                )
                upload_seconds = time.perf_counter() - started
            sampler.running = False
            sampler.join()
            if response.status_code != 202:
                raise SystemExit(f"upload failed: {response.status_code} {response.text[:500]}")
            job_id = response.json()["data"]["id"]
            stored = httpx.get(f"{url}/jobs/{job_id}", headers={"X-API-Key": key}).json()["data"][
                "attachments"
            ]
            assert stored[0]["size"] == size, stored
        finally:
            server.terminate()
            server.wait(20)

    upload_rate = size / MB / upload_seconds
    copy_rate = size / MB / copy_seconds
    print(f"server: {args.server}, file: {args.size_mb} MB")
    print(
        f"server RSS idle {idle / MB:.0f} MB, peak {sampler.peak / MB:.0f} MB, growth {(sampler.peak - idle) / MB:.0f} MB"
    )
    print(
        f"upload {upload_seconds:.1f} s = {upload_rate:.0f} MB/s; local copy {copy_seconds:.2f} s = {copy_rate:.0f} MB/s"
    )
    print(f"upload throughput / local copy throughput = {upload_rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
