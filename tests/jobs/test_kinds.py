"""Job kinds plug into the core through a registry: the queue and delete dispatch through it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NotRequired, TypedDict

import pytest

from apikeys.services import api_key_create
from claudesvc.auth import Caller
from claudesvc.errors import ServiceError
from jobs import tasks
from jobs.kinds import _KINDS, job_kind, job_kind_register
from jobs.models import Job, JobStatus
from jobs.services import job_cancel, job_create, job_delete, job_transition

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


JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.mark.parametrize(
    "module",
    sorted(str(p.relative_to(JOBS)) for p in JOBS.rglob("*.py") if "migrations" not in p.parts),
)
def test_the_job_core_does_not_import_the_transcription_app(module):
    tree = ast.parse((JOBS / module).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("transcription")]


# -- a third kind, registered here: no change to jobs/ -------------------------------------


class StepsOptions(TypedDict):
    steps: int
    note: NotRequired[str]


@pytest.fixture
def steps_kind(monkeypatch):
    """A kind whose job runs ``steps`` child jobs of its own kind, inline, then completes."""
    monkeypatch.setattr("jobs.services.job_enqueue", lambda: None)
    seen = {"ran": [], "cleaned": [], "children": []}

    def execute(job_id):
        seen["ran"].append(job_id)
        job = Job.objects.get(pk=job_id)
        if job.parent_id is None:
            for n in range(job.options["steps"]):
                child = job_create(
                    caller=Caller(api_key=job.api_key),
                    prompt=f"step {n}",
                    kind="steps",
                    options={"steps": 0},
                    parent=job,
                    enqueue=False,
                    check_limits=False,
                )
                seen["children"].append(child.pk)
                assert tasks.run_child_job(child.pk)  # claimed like a queued job, run in this worker
        job_transition(
            job_id=job_id, frm=JobStatus.RUNNING, to=JobStatus.COMPLETED, result=f"ran {job.prompt}"
        )

    job_kind_register("steps", execute=execute, cleanup=seen["cleaned"].append, options=StepsOptions)
    yield seen
    _KINDS.pop("steps", None)


def test_a_third_kind_with_child_jobs_runs_through_the_queue_on_one_worker(steps_kind):
    key, _ = api_key_create(name="steps")
    job = job_create(caller=Caller(api_key=key), prompt="parent", kind="steps", options={"steps": 2})
    # One worker, one wake-up: the parent runs its children inline, nothing waits for a second worker.
    assert tasks.run_pending_jobs() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    children = list(job.children.order_by("created_at"))
    assert [c.pk for c in children] == steps_kind["children"]
    assert all(c.status == JobStatus.COMPLETED and c.parent_id == job.pk for c in children)
    assert steps_kind["ran"] == [job.pk, *steps_kind["children"]]
    # Deleting the parent deletes its children through the same path (their cleanup runs).
    job_delete(job=job)
    assert set(steps_kind["cleaned"]) == {job.pk, *steps_kind["children"]}
    assert not Job.objects.filter(pk__in=[job.pk, *steps_kind["children"]]).exists()


def test_the_queue_never_claims_a_child_job_and_cancelling_the_parent_cancels_it(steps_kind):
    key, _ = api_key_create(name="steps")
    parent = job_create(caller=Caller(api_key=key), prompt="parent", kind="steps", options={"steps": 0})
    Job.objects.filter(pk=parent.pk).update(status=JobStatus.RUNNING)
    child = job_create(
        caller=Caller(api_key=key),
        prompt="c",
        kind="steps",
        options={"steps": 0},
        parent=parent,
        enqueue=False,
    )
    assert tasks.run_pending_jobs() == 0  # only its parent's worker runs it
    parent.refresh_from_db()
    job_cancel(job=parent)
    child.refresh_from_db()
    assert child.status == JobStatus.CANCELLED and child.error_message == "Cancelled by the caller"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"steps": 1, "colour": "red"}, "unknown job option(s) for this kind: colour"),
        ({"steps": "two"}, "job option 'steps' has the wrong type"),
        ({"steps": True}, "job option 'steps' has the wrong type"),
    ],
)
def test_a_kinds_options_are_checked_where_the_job_is_created(steps_kind, options, words):
    key, _ = api_key_create(name="steps")
    with pytest.raises(ServiceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        job_create(caller=Caller(api_key=key), prompt="p", kind="steps", options=options)
    assert not Job.objects.exists()


def test_claude_options_refuse_unknown_keys_and_keep_the_stored_shape():
    key, _ = api_key_create(name="claude-options")
    with pytest.raises(ServiceError, match="unknown job option"):
        job_create(caller=Caller(api_key=key), prompt="p", options={"partial_message": True}, enqueue=False)
    options = {"partial_messages": True, "max_tokens": 100, "cwd": "/tmp", "timeout_ms": 1500}
    job = job_create(caller=Caller(api_key=key), prompt="p", options=options, enqueue=False)
    job.refresh_from_db()
    assert job.options == options


def test_a_reaped_parent_takes_its_unstarted_children_with_it(steps_kind):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.reaper import job_reap_stale

    key, _ = api_key_create(name="steps")
    parent = job_create(caller=Caller(api_key=key), prompt="parent", kind="steps", options={"steps": 0})
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=parent.pk).update(
        status=JobStatus.RUNNING, worker="elsewhere:1", started_at=long_ago, heartbeat_at=long_ago
    )
    child = job_create(
        caller=Caller(api_key=key),
        prompt="c",
        kind="steps",
        options={"steps": 0},
        parent=parent,
        enqueue=False,
    )
    assert job_reap_stale() == 1
    child.refresh_from_db()
    assert child.status == JobStatus.CANCELLED
    assert child.events.last().data["error"] == "cancelled"


def test_a_third_kind_is_created_through_post_jobs_without_a_change_to_the_jobs_api(
    steps_kind, owner_key, client_for
):
    from rest_framework import serializers

    class StepsInput(serializers.Serializer):
        type = serializers.ChoiceField(choices=["steps"])
        steps = serializers.IntegerField(min_value=0, max_value=3, help_text="How many child steps")

    def create(*, caller, data):
        return job_create(caller=caller, prompt="steps", kind="steps", options={"steps": data["steps"]})

    spec = _KINDS["steps"]
    job_kind_register(
        "steps",
        execute=spec.execute,
        cleanup=spec.cleanup,
        options=StepsOptions,
        create_input=StepsInput,
        create=create,
    )
    client = client_for(owner_key)

    made = client.post("/jobs", {"type": "steps", "steps": 2}, format="json")
    assert made.status_code == 202, made.content
    job = Job.objects.get(pk=made.json()["data"]["id"])
    assert (job.kind, job.options) == ("steps", {"steps": 2})

    bad = client.post("/jobs", {"type": "steps", "steps": 9}, format="json")
    assert bad.status_code == 400 and "steps" in bad.content.decode()
    unknown = client.post("/jobs", {"type": "nope", "prompt": "x"}, format="json")
    assert unknown.status_code == 400
    message = unknown.json()["error"]["message"]
    assert '"steps"' in message and '"transcription"' in message
