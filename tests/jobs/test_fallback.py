"""The API fallback: a process whose CLI cannot run goes straight to the Messages API
(the fake upstream here), through the same runner, events and outcome."""

from __future__ import annotations

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import runner
from jobs.fallback import API_MODEL_ALIASES, fallback_available
from jobs.models import Job, JobStatus
from jobs.process_api.services import process_create
from jobs.queue import job_claim_next
from jobs.services import job_create

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def no_cli(settings, tmp_path, upstream):
    settings.CLAUDE_CLI_PATH = str(tmp_path / "missing-claude")
    settings.ANTHROPIC_API_KEY = "test-key"
    settings.ANTHROPIC_BASE_URL = upstream.url
    return upstream


def run_process(prompt: str, **kwargs) -> Job:
    key, _ = api_key_create(name="fallback")
    process_create(caller=Caller(api_key=key), prompt=prompt, **kwargs)
    job = job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    return job


def api_requests(upstream) -> list[dict]:
    return [r for r in upstream.requests if r["path"] == "/v1/messages"]


def test_a_process_runs_through_the_messages_api_when_the_cli_is_missing(no_cli):
    before = len(api_requests(no_cli))
    job = run_process(
        "Hi [[reply:Hello from the API]]", system_prompt="Be brief", max_tokens=321, model="haiku"
    )
    assert job.status == JobStatus.COMPLETED, job.error_message
    assert job.result == "Hello from the API"
    assert job.options["executed_via"] == "api"
    assert "ran through the Anthropic Messages API" in job.stderr
    assert job.exit_code == 0 and job.usage["output_tokens"] > 0
    sent = api_requests(no_cli)[before:]
    assert len(sent) == 1
    body = sent[0]["body"]
    assert (body["model"], body["max_tokens"], body["system"]) == (
        API_MODEL_ALIASES["haiku"],
        321,
        "Be brief",
    )
    assert body["messages"] == [{"role": "user", "content": "Hi [[reply:Hello from the API]]"}]
    headers = {k.lower(): v for k, v in sent[0]["headers"].items()}
    assert "test-key" in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))
    types = list(job.events.order_by("seq").values_list("type", flat=True))
    assert types == ["system", "assistant", "result"]
    assert job.events.get(type="system").data["executed_via"] == "api"


def test_the_fallback_streams_text_deltas_when_asked(no_cli):
    job = run_process("[[reply:one two three]]", stream=True)
    assert job.status == JobStatus.COMPLETED
    deltas = [
        e.data["event"]["delta"]["text"]
        for e in job.events.filter(type="stream_event").order_by("seq")
        if e.data["event"]["type"] == "content_block_delta"
    ]
    assert "".join(deltas) == "one two three" and len(deltas) == 3


def test_an_api_error_fails_the_process_with_its_message(no_cli):
    job = run_process("[[error:400]]")
    assert job.status == JobStatus.FAILED
    assert "fake upstream 400" in job.error_message
    assert job.options["executed_via"] == "api"


def test_a_cli_that_cannot_start_falls_back_too(settings, tmp_path, upstream):
    # It answers --version (so it looks installed) but exits 127 when run for real.
    fake_cli = tmp_path / "claude"
    fake_cli.write_text(
        '#!/bin/sh\n[ "$1" = "--version" ] && echo "9.9.9 (Claude Code)" && exit 0\nexit 127\n'
    )
    fake_cli.chmod(0o755)
    settings.CLAUDE_CLI_PATH = str(fake_cli)
    settings.ANTHROPIC_API_KEY = "test-key"
    settings.ANTHROPIC_BASE_URL = upstream.url
    assert runner.cli_info().installed
    job = run_process("[[reply:rescued]]")
    assert (job.status, job.result, job.options["executed_via"]) == (JobStatus.COMPLETED, "rescued", "api")


def test_without_a_key_there_is_no_fallback(no_cli, settings):
    settings.ANTHROPIC_API_KEY = ""
    assert not fallback_available()
    job = run_process("[[reply:never]]")
    assert job.status == JobStatus.FAILED
    assert "cannot start" in job.error_message
    assert "executed_via" not in job.options


def test_jobs_that_did_not_ask_for_it_do_not_fall_back(no_cli):
    key, _ = api_key_create(name="jobs")
    job_create(caller=Caller(api_key=key), prompt="[[reply:never]]", enqueue=False)
    job = job_claim_next()
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "cannot start" in job.error_message
