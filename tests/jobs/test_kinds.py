"""Job kinds plug into the core through a registry: the queue and delete dispatch through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from jobs import tasks
from jobs.kinds import _KINDS, job_kind, job_kind_register
from jobs.models import Job, JobStatus
from jobs.services import job_create, job_delete, job_transition

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def echo_kind():
    ran, cleaned = [], []

    def execute(job_id):
        ran.append(job_id)
        job_transition(job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED, result="echo")

    job_kind_register("echo", execute=execute, cleanup=cleaned.append)
    yield ran, cleaned
    _KINDS.pop("echo", None)


def test_a_new_kind_runs_through_the_queue_and_is_cleaned_up_on_delete(echo_kind, monkeypatch):
    ran, cleaned = echo_kind
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    key, _ = api_key_create(name="kinds")
    job = job_create(caller=Caller(api_key=key), prompt="hello", kind="echo")
    assert tasks.run_pending_jobs() == 1
    job.refresh_from_db()
    assert ran == [job.pk] and (job.status, job.result) == (JobStatus.COMPLETED, "echo")
    job_delete(job=job)
    assert cleaned == [job.pk] and not Job.objects.filter(pk=job.pk).exists()


def test_the_built_in_kinds_are_registered_by_their_apps():
    assert job_kind("claude").cleanup is None
    assert job_kind("transcription").cleanup is not None
    with pytest.raises(LookupError, match="no job kind 'nope'"):
        job_kind("nope")


@pytest.mark.parametrize("module", ["tasks.py", "services.py", "worker.py", "kinds.py"])
def test_the_job_core_does_not_import_the_transcription_app(module):
    tree = ast.parse((Path(__file__).resolve().parents[2] / "jobs" / module).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("transcription")]
