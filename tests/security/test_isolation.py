"""Attacks on the separation between jobs, with the real CLI scripted by the fake upstream.

Tenant A's job tries to read and change what tenant B's job left (its output
folder, its CLI home, its transcript), the service's own files and
environment; a plain job must not carry memory or the service's git status
upstream. Under the sandbox (the default here) even a ``trusted`` key with a
shell gets nowhere; without it the CLI's permission engine still holds for the
``safe`` policy.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from jobs.models import JobStatus
from jobs.workspace import config_dir, job_paths
from tests.security.conftest import bash, files_containing, run_job, token, tool, tool_results

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("upstream")]


def requests_with(upstream, marker: str) -> str:
    """Every upstream request of the conversation whose prompt holds ``marker``, as one string."""
    bodies = [json.dumps(r["body"]) for r in upstream.main_requests()]
    return "\n".join(b for b in bodies if marker in b)


@pytest.fixture
def service_repo(settings, tmp_path):
    """JOBS_ROOT inside a git repository with a commit and an untracked file, like `make run` from a checkout."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "settings.py").write_text("SECRET = 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "SERVICE-COMMIT-MESSAGE"], check=True)
    (repo / "service-untracked-file.txt").write_text("x")
    settings.JOBS_ROOT = repo / "var" / "jobs"
    return repo


@pytest.fixture
def keep_folders(settings):
    settings.JOB_KEEP_WORKDIR_SECONDS = 3600


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_plain_jobs_upstream_request_has_no_memory_and_no_git_status(
    settings, upstream, service_repo, mode
):
    settings.CLAUDE_SANDBOX = mode
    marker = token("plain")
    job = run_job(f"Hello {marker}")
    assert job.status == JobStatus.COMPLETED, job.error_message
    sent = requests_with(upstream, marker)
    assert sent
    for leak in ("gitStatus", "SERVICE-COMMIT-MESSAGE", "service-untracked-file", "MEMORY.md", "auto memory"):
        assert leak not in sent, leak
    if mode == "bwrap":
        # Inside the sandbox there is no repository at all.
        assert "Is a git repository: true" not in sent


@pytest.mark.usefixtures("keep_folders")
@pytest.mark.parametrize(("policy", "mode"), [("safe", "bwrap"), ("safe", "none"), ("trusted", "bwrap")])
def test_a_job_can_neither_read_nor_change_another_tenants_job(settings, upstream, policy, mode):
    """``trusted`` has a shell, so only the sandbox holds it (and the CLI refuses it as root without one)."""
    settings.CLAUDE_SANDBOX = mode
    # The attacker greps for the label; the full token appears only in B's files.
    secret = token("tenant-b-secret")
    victim = run_job(f"Keep this {secret} [[reply:noted]]")
    assert victim.status == JobStatus.COMPLETED, victim.error_message
    b = job_paths(victim.pk)
    b_out = b.output
    (b_out / "report.md").write_text(f"report {secret}")
    b_config = config_dir(b.home)
    transcripts = files_containing(b.home, secret)
    assert transcripts, "the victim's CLI home should hold its transcript"
    before = {p: p.read_bytes() for p in b.root.rglob("*") if p.is_file()}

    marker = token("attacker")
    if policy == "trusted":
        attack = bash(
            f"cat {b_out}/report.md; cat {transcripts[0]}; ls -la {b.root} {b.home}; "
            f"echo PWNED > {b_config}/CLAUDE.md; echo PWNED >> {transcripts[0]}; mkdir -p {b_config}/memory; "
            f"echo PWNED > {b_out}/report.md; grep -r tenant-b-secret {django_settings.JOBS_ROOT}; echo done"
        )
    else:
        attack = (
            tool("Read", file_path=str(b_out / "report.md"))
            + tool("Read", file_path=str(transcripts[0]))
            + tool("Write", file_path=str(b_config / "CLAUDE.md"), content="PWNED")
            + tool("Edit", file_path=str(b_out / "report.md"), old_string="report", new_string="PWNED")
            + tool("Grep", pattern="tenant-b-secret", path=str(django_settings.JOBS_ROOT))
        )
    attacker = run_job(f"{marker} {attack}", policy=policy)
    assert attacker.status == JobStatus.COMPLETED, attacker.error_message
    assert secret not in tool_results(attacker)
    assert secret not in requests_with(upstream, marker)
    after = {p: p.read_bytes() for p in b.root.rglob("*") if p.is_file()}
    assert after == before
    assert not (b_config / "CLAUDE.md").exists() and not (b_config / "memory").exists()


def test_a_session_turn_and_a_plain_job_do_not_share_a_cli_home(settings):
    """Each job's CLAUDE_CONFIG_DIR is its own (a compat session's is shared by its turns only)."""
    from jobs import runner

    first = run_job("one [[reply:a]]")
    second = run_job("two [[reply:b]]")
    homes = {
        runner.cli_home(first, job_paths(first.pk)),
        runner.cli_home(second, job_paths(second.pk)),
        Path(settings.CLAUDE_HOME),
    }
    assert len(homes) == 3


@pytest.mark.usefixtures("bwrap_on")
def test_the_cli_runs_as_another_user_in_its_own_namespaces(monkeypatch, tmp_path):
    canary = token("worker-environment")
    monkeypatch.setenv("CLAUDESVC_TEST_CANARY", canary)
    outside = tmp_path / "outside.txt"
    script = (
        "echo UID=$(id -u); echo MNT=$(readlink /proc/self/ns/mnt); echo PIDNS=$(readlink /proc/self/ns/pid); "
        f"cat /proc/*/environ | tr '\\0' '\\n'; cat /proc/{os.getpid()}/environ; "
        f"ls {django_settings.BASE_DIR}/.git; cat {django_settings.BASE_DIR}/pyproject.toml; "
        f"ls {django_settings.MEDIA_ROOT}; cat /etc/shadow; "
        f"touch {outside}; touch /usr/pwned; echo end"
    )
    job = run_job(f"inspect {bash(script)}", policy="trusted")
    assert job.status == JobStatus.COMPLETED, job.error_message
    out = tool_results(job)
    assert f"UID={os.getuid()}" not in out and "UID=10001" in out
    assert f"MNT={os.readlink('/proc/self/ns/mnt')}" not in out and "MNT=mnt:[" in out
    assert f"PIDNS={os.readlink('/proc/self/ns/pid')}" not in out
    assert canary not in out
    assert "[tool]" not in out  # pyproject.toml of the checkout is not there to read
    assert "No such file or directory" in out
    assert not outside.exists() and not Path("/usr/pwned").exists()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_the_safe_policy_cannot_read_outside_or_other_processes_environment(settings, monkeypatch, mode):
    settings.CLAUDE_SANDBOX = mode
    canary = token("worker-environment")
    monkeypatch.setenv("CLAUDESVC_TEST_CANARY", canary)
    secret_file = Path(settings.MEDIA_ROOT) / "elsewhere.txt"
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    secret = token("outside-secret")
    secret_file.write_text(secret)
    job = run_job(
        "look "
        + tool("Read", file_path=f"/proc/{os.getpid()}/environ")
        + tool("Read", file_path="/proc/1/environ")
        + tool("Read", file_path=str(secret_file))
        + tool("Write", file_path=str(secret_file), content="changed")
    )
    assert job.status == JobStatus.COMPLETED, job.error_message
    out = tool_results(job)
    assert canary not in out and secret not in out
    assert secret_file.read_text() == secret
