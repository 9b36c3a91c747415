"""The Docker deployment, as far as it can be checked without Docker: the compose file, the
Dockerfile's promises, and the container's start command run here as it is."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON (exec form) argument of the runtime stage's last ``name`` instruction."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    lines = [line for line in runtime.splitlines() if line.startswith(f"{name} ")]
    return json.loads(lines[-1][len(name) + 1 :])


def test_the_compose_file_names_the_services_the_readme_describes():
    services = compose()["services"]
    assert set(services) == {"web", "worker", "postgres", "redis"}
    readme = (ROOT / "README.md").read_text()
    docker_part = readme[readme.index("### Docker Compose") :]
    for name in services:
        assert f"`{name}`" in docker_part, name


def test_web_and_worker_share_the_data_volume_and_the_worker_scales():
    spec = compose()
    web, worker = spec["services"]["web"], spec["services"]["worker"]
    assert "data:/data" in web["volumes"] and "data:/data" in worker["volumes"]
    assert "data" in spec["volumes"]
    # Scalable: no fixed name, no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["python", "manage.py", "qcluster"]
    assert "--no-worker" in web["command"][-1] and "migrate" in web["command"][-1]
    assert "migrate" not in " ".join(worker["command"])
    for name in ("web", "worker"):
        env = spec["services"][name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert (
            env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
            and "}@redis:6379/0" in env["REDIS_URL"]
        )
        assert ":${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]
        assert env["DJANGO_ALLOWED_HOSTS"].startswith("${DJANGO_ALLOWED_HOSTS")
        assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")


def test_postgres_and_redis_take_a_password_with_no_default():
    """A job's CLI shares the worker's network (README, security model): a database or a Redis
    that a trusted key's shell could open without a password would be every tenant's."""
    services = compose()["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    redis = services["redis"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert '--requirepass "$$REDIS_PASSWORD"' in redis["command"][-1]
    assert "REDISCLI_AUTH=" in redis["healthcheck"]["test"][-1]
    # The password reaches the shell as "$REDIS_PASSWORD", the service's own variable.
    run = subprocess.run(
        ["sh", "-c", redis["command"][-1].replace("$$", "$").replace("exec redis-server", "echo")],
        env={"REDIS_PASSWORD": "p4ss", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == ["--appendonly", "yes", "--requirepass", "p4ss"]


def test_every_service_has_a_health_check():
    services = compose()["services"]
    for name in ("worker", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    # web uses the image's HEALTHCHECK.
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD curl -fsS .*/health", DOCKERFILE, re.M)
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_worker_health_check_finds_a_qcluster_process_and_not_itself():
    test = compose()["services"]["worker"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "sh"]
    check = " ".join(shlex.quote(part) for part in test[1:])
    # In a PID namespace of its own (bubblewrap), as in a container: other clusters on this
    # machine stay out of sight.
    isolated = [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--unshare-pid",
        "--proc",
        "/proc",
        "bash",
        "-c",
    ]
    assert subprocess.run([*isolated, check], capture_output=True, timeout=30).returncode == 1
    # A process named like the cluster; the name is put together so no command line spells it.
    with_cluster = f'n=q; (exec -a "${{n}}cluster" sleep 5 &); sleep 0.3; {check}'
    assert subprocess.run([*isolated, with_cluster], capture_output=True, timeout=30).returncode == 0


def test_the_image_runs_as_a_non_root_user_under_tini_with_read_only_code():
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER claudesvc$", runtime, re.M)
    assert dockerfile_instruction("ENTRYPOINT") == ["/usr/bin/tini", "--"]
    for package in ("tini", "bubblewrap", "ffmpeg"):
        assert re.search(rf"apt-get install[^\n]*(\n\s+[^\n]*)*\b{package}\b", runtime), package
    assert "COPY . ." in runtime and "--chown" not in runtime  # the code stays root's
    assert "chmod -R a-w /app" in runtime
    assert "DJANGO_ALLOWED_HOSTS" not in runtime.split("HEALTHCHECK")[0].split("ENV ", 1)[1].split("RUN")[0]


def test_dockerignore_keeps_tests_benches_and_local_state_out():
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    }
    assert {".git", "tests", "bench", "var", ".venv"} <= ignored


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_containers_start_command_runs_here_and_stops_on_sigterm(tmp_path):
    cmd = dockerfile_instruction("CMD")
    port = _free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOWED_HOSTS")
        },
        # What the image's ENV and a plain `docker run -e DJANGO_SECRET_KEY=…` give it.
        # The image's PATH=/venv/bin:$PATH: "python" is the virtualenv's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CLAUDESVC_VAR_DIR": str(tmp_path / "data"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "HOST": "0.0.0.0",
        "PORT": str(port),
        "DJANGO_SECRET_KEY": "a-test-secret-" + "x" * 40,
        "JOBS_ROOT": str(tmp_path / "data" / "jobs"),
        "MEDIA_ROOT": str(tmp_path / "data" / "media"),
        "CLAUDE_HOME": str(tmp_path / "data" / "claude-home"),
        "FILE_UPLOAD_TEMP_DIR": str(tmp_path / "data" / "uploads"),
        "Q_CLUSTER_NAME": f"deploy-test-{port}",
    }
    (tmp_path / "data").mkdir()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300  # generous: the machine may be busy
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # As the HEALTHCHECK asks.
                health = httpx.get(
                    f"http://127.0.0.1:{port}/health", headers={"Host": "localhost"}, timeout=30
                )
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health is not None and health.status_code == 200, proc.stdout.read1().decode(errors="replace")
        refused = httpx.get(
            f"http://127.0.0.1:{port}/health", headers={"Host": "claude.example.com"}, timeout=10
        )
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "host_not_allowed"
        assert "'claude.example.com'" in error["message"] and "DJANGO_ALLOWED_HOSTS" in error["message"]
        # docker stop: tini passes SIGTERM to the command, which `exec`ed the server.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Nothing of the service is left running (the server's children went with it).
    leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not leftover, leftover


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example"])
def test_a_host_outside_allowed_hosts_gets_a_clear_400(client, host, settings):
    settings.DEBUG = False
    response = client.get("/health", HTTP_HOST=host)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "host_not_allowed"


def test_the_readme_links_only_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert "docs/ARCHITECTURE.md" in targets
    for target in targets:
        assert not target.startswith(("http:", "https:", "../", "/")), target
        if not target.startswith("#"):
            assert (ROOT / target).exists(), target
    assert "../shared" not in readme
