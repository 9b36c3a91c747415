"""Pre-started CLIs (issue 18, item 5; jobs/spares.py): a worker keeps a CLI
started for jobs like its last one, and a job started exactly like it takes
it over instead of starting its own.

The real service (one worker process, so which spare a job meets is known),
the real CLI in its sandbox, the fake upstream.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_live_sessions import _gone, own_service  # noqa: F401 - a fixture
from tests.jobs.test_runner import tool_results

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPARES = {"JOB_WORKERS": "1", "CLI_SPARES_PER_WORKER": "1", "JOB_KEEP_WORKDIR_SECONDS": "600"}


def spares_of(svc) -> list[Path]:
    """The spare CLIs' folders of the service's (only) worker host that have a CLI running."""
    root = Path(svc.env["JOBS_ROOT"]) / "spares"
    if not root.exists():
        return []
    found = []
    for folder in root.iterdir():
        try:
            if not folder.is_symlink() and psutil.pid_exists(int((folder / "cli.pid").read_text())):
                found.append(folder)
        except (OSError, ValueError):
            continue
    return found


def spare_ready(svc, *, other_than: Path | None = None, timeout: float = 90) -> Path:
    deadline = time.monotonic() + timeout
    seen, since = None, 0.0
    while time.monotonic() < deadline:
        found = [f for f in spares_of(svc) if f != other_than]
        if len(found) != 1 or found[0] != seen:
            seen, since = (found[0] if len(found) == 1 else None), time.monotonic()
        elif time.monotonic() - since > 0.5:  # the one spare, not one closing to make room
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no spare CLI started:\n{svc.logs()[-4000:]}")


def run_job(client, prompt: str, **fields):
    from jobs.models import Job

    created = client.post("/jobs", json={"prompt": prompt, **fields})
    assert created.status_code == 202, created.text
    job_id = created.json()["data"]["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()["data"]["status"]
        if status not in ("pending", "running"):
            break
        time.sleep(0.1)
    return Job.objects.get(pk=job_id)


def test_a_job_runs_on_the_spare_started_before_it(own_service, owner_key):  # noqa: F811
    with own_service(**SPARES) as svc, svc.client(owner_key) as client:
        first = run_job(client, "Warm up [[reply:one]]")
        assert first.status == "completed"
        spare = spare_ready(svc)
        pid = int((spare / "cli.pid").read_text())
        born = datetime.fromtimestamp(psutil.Process(pid).create_time()).astimezone()
        # The CLI sees its folder under the spare's name, also once it is the job's.
        target = spare / "work" / "out" / "answer.md"
        job = run_job(client, f'Write it [[tool:Write {{"file_path": "{target}", "content": "42"}}]]')
        assert job.status == "completed", (job.error_message, svc.logs()[-4000:])
        # It ran on that CLI, started before the job existed ...
        assert job.options.get("spare_cli") is True and job.cli_pid in (None, pid)  # written each watch round
        assert born < job.created_at
        # ... and what it wrote is the job's, from the job's own folder.
        assert [a.name for a in job.artifacts.all()] == ["answer.md"]
        assert (Path(svc.env["JOBS_ROOT"]) / str(job.pk) / "work" / "out" / "answer.md").read_text() == "42"
        # The spare is used up: its folder became the job's, its process ended with the job,
        # and a fresh one waits for the next job.
        assert not spare.exists() and not spare.is_symlink()
        assert _gone(pid)
        assert spare_ready(svc, other_than=spare) != spare


def test_a_spare_serves_one_job_and_sees_nothing_of_another(own_service, owner_key, other_key):  # noqa: F811
    with own_service(**SPARES) as svc:
        with svc.client(owner_key) as client:
            run_job(client, "Warm up [[reply:one]]")
            spare = spare_ready(svc)
            secret = spare / "work" / "out" / "secret.txt"
            mine = run_job(
                client, f'Keep it [[tool:Write {{"file_path": "{secret}", "content": "TOP-SECRET-SPARE"}}]]'
            )
        assert mine.options.get("spare_cli") is True
        kept = Path(svc.env["JOBS_ROOT"]) / str(mine.pk) / "work" / "out" / "secret.txt"
        assert kept.read_text() == "TOP-SECRET-SPARE"  # still on disk (JOB_KEEP_WORKDIR_SECONDS)
        theirs, used = [], spare
        with svc.client(other_key) as client:
            for path in (secret, kept):
                used = spare_ready(svc, other_than=used)
                assert used != spare
                theirs.append(run_job(client, f'Read it [[tool:Read {{"file_path": "{path}"}}]]'))
    for job in theirs:
        # Another CLI (a spare of its own), which sees neither the first job's folder
        # by the name its CLI knew it under nor by its real one.
        assert job.status == "completed" and job.options.get("spare_cli") is True
        results = tool_results(job)
        assert results and all("TOP-SECRET-SPARE" not in r for r in results)


def test_a_job_with_other_settings_starts_its_own_cli_and_the_next_one_gets_a_spare(
    own_service,  # noqa: F811
    owner_key,
):
    with own_service(**SPARES) as svc, svc.client(owner_key) as client:
        run_job(client, "Warm up [[reply:one]]")
        spare_ready(svc)
        other = run_job(client, "Other model [[reply:two]]", model="opus")
        assert other.status == "completed" and not other.options.get("spare_cli")
        # The worker now keeps a spare like the last job (the default one made room).
        spare_ready(svc)
        again = run_job(client, "Same again [[reply:three]]", model="opus")
        assert again.status == "completed" and again.options.get("spare_cli") is True
        assert again.model == "opus" and again.result == "three"


def test_spares_end_with_their_worker(own_service, owner_key):  # noqa: F811
    with own_service(**SPARES) as svc:
        spare = spare_ready(svc)
        pid = int((spare / "cli.pid").read_text())
        worker = next(
            p
            for p in psutil.Process(pid).parents()
            if "qcluster" in " ".join(p.cmdline()) and p.pid != os.getpid()
        )
        # SIGKILLed: nothing of the worker runs its exit code, the CLI goes with it.
        os.kill(worker.pid, signal.SIGKILL)
        assert _gone(pid)
        # The cluster starts a new worker process, which tidies the folder and starts a spare.
        fresh = spare_ready(svc, other_than=spare)
        assert not spare.exists()
        fresh_pid = int((fresh / "cli.pid").read_text())
        # A graceful stop closes it too.
        for host in svc.hosts.values():
            host.stop()
        assert _gone(fresh_pid)
        assert not fresh.exists()


def test_a_one_off_compat_call_runs_on_a_spare_and_its_session_can_go_on(
    own_service,  # noqa: F811
    owner_key,
    upstream,
):
    from tests.e2e.test_compat_sdks import job_of, marker, oai, upstream_turns

    with own_service(**SPARES) as svc:
        client = oai(svc, owner_key.secret)

        def ask(text: str, history=(), session: str | None = None):
            raw = client.chat.completions.with_raw_response.create(
                model="haiku",
                messages=[*history, {"role": "user", "content": text}],
                extra_headers={"X-Request-ID": session} if session else {},
            )
            return raw, raw.parse().choices[0].message.content

        ask("Warm up [[reply:one]]")  # the worker now keeps a spare like a compat call
        spare = spare_ready(svc)
        first = f"My name is Ada {marker()} [[reply:Nice to meet you, Ada.]]"
        raw, answer = ask(first)
        job = job_of(raw.headers["x-job-id"])
        assert answer == "Nice to meet you, Ada." and job.options.get("spare_cli") is True
        assert not spare.exists()
        # The turn's conversation is its session's, kept in the database: the one-off
        # session (named in X-Session-ID) resumes it, on whatever CLI runs the next turn.
        probe = marker()
        raw2, _ = ask(
            f"What is my name? {probe}",
            history=[{"role": "user", "content": first}, {"role": "assistant", "content": answer}],
            session=raw.headers["x-session-id"],
        )
        two = job_of(raw2.headers["x-job-id"])
        assert two.session_id == job.session_id and two.options["resume"] == job.claude_session_id
        assert upstream_turns(upstream, probe) == [
            ("user", first),
            ("assistant", "Nice to meet you, Ada."),
            ("user", f"What is my name? {probe}"),
        ]


def test_a_worker_killed_while_its_job_runs_on_a_spare_fails_the_job_once(own_service, owner_key):  # noqa: F811
    from jobs.models import Job

    with own_service(**SPARES) as svc, svc.client(owner_key) as client:
        run_job(client, "Warm up [[reply:one]]")
        pid = int((spare_ready(svc) / "cli.pid").read_text())
        slow = "Long [[slow:1]][[reply:" + " ".join(f"w{i}" for i in range(60)) + "]]"
        created = client.post("/jobs", json={"prompt": slow})
        assert created.status_code == 202, created.text
        job_id = created.json()["data"]["id"]
        deadline = time.monotonic() + 60
        while Job.objects.get(pk=job_id).cli_pid != pid:  # running, on that spare
            assert time.monotonic() < deadline, svc.logs()[-4000:]
            time.sleep(0.1)
        worker = int(Job.objects.get(pk=job_id).worker.rpartition(":")[2])
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not Job.objects.get(pk=job_id).is_final:
            assert time.monotonic() < deadline, svc.logs()[-4000:]
            time.sleep(0.2)
        job = Job.objects.get(pk=job_id)
        assert job.status == "failed"
        assert "died" in job.error_message or "stopped responding" in job.error_message
        # Its CLI went with the worker, and the job was not started again anywhere.
        assert _gone(pid)
        assert job.events.filter(type="system", data__subtype="init").count() == 1
