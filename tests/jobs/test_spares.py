"""Which jobs a pre-started CLI may serve (jobs/spares.py): exactly those whose CLI
would be started with the same options. The running spares are in tests/e2e/test_spares_e2e.py."""

from __future__ import annotations

import os
import uuid
from decimal import Decimal

import pytest

from jobs import spares
from jobs.models import Job
from jobs.workspace import JobPaths


def job(**fields) -> Job:
    values = {"model": "sonnet", "tool_policy": "safe", "system_prompt": "", "options": {}, **fields}
    return Job(pk=uuid.uuid4(), prompt="hi", **values)


@pytest.fixture
def paths(tmp_path) -> JobPaths:
    return JobPaths(root=tmp_path / "spares" / "1-abc")


def test_a_job_like_the_template_has_the_spares_options(paths):
    template = spares.template_of(job(model="opus", options={"max_tokens": 100, "timeout_ms": 5}))
    assert template.options == {"max_tokens": 100}
    assert spares._key_for(template, paths, "job") == spares._key_for(
        job(model="opus", options={"max_tokens": 100}), paths, "job"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model": "opus"},
        {"tool_policy": "read_only"},
        {"system_prompt": "Be brief."},
        {"options": {"max_tokens": 50}},
        {"options": {"partial_messages": True}},
        {"options": {"json_schema": {"type": "object"}}},
    ],
)
def test_any_other_setting_of_the_job_gives_other_options(paths, change):
    assert spares._key_for(job(**change), paths, "job") != spares._key_for(job(), paths, "job")


def test_a_changed_service_setting_gives_other_options(paths, settings):
    before = spares._key_for(job(), paths, "job")
    settings.CLAUDE_ENV_ALLOW = [*settings.CLAUDE_ENV_ALLOW, "EXTRA_VAR"]
    assert spares._key_for(job(), paths, "job") != before


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": uuid.uuid4()},
        {"options": {"cwd": "/srv/project"}},
        {"options": {"resume": "abc"}},
        {"max_budget_usd": Decimal("1.5")},
    ],
)
def test_sessions_working_directories_resumes_and_budget_caps_never_take_a_spare(fields):
    assert spares.layout_of(job(**fields)) is None
    assert spares.layout_of(job()) == spares.JOB_LAYOUT


def test_nothing_is_taken_outside_a_worker_process():
    assert spares.take(job()) is None  # no worker agent in the test process


def test_adoption_renames_the_spares_folder_to_the_jobs_and_links_the_old_name(settings, tmp_path):
    settings.JOBS_ROOT = str(tmp_path / "jobs")
    spare_paths = JobPaths(root=tmp_path / "jobs" / "spares" / "1-abc")
    spare_paths.output.mkdir(parents=True)
    (spare_paths.output / "x.txt").write_text("x")
    spare = spares.Spare(paths=spare_paths, template=job())

    class Store:
        def bind(self, *, job_id, writer_id):
            self.bound = job_id

    spare.store = Store()
    mine = job()
    assert spares.adopt(spare, mine)
    target = tmp_path / "jobs" / str(mine.pk)
    assert (target / "work" / "out" / "x.txt").read_text() == "x"
    assert spare_paths.root.is_symlink() and spare_paths.root.resolve() == target.resolve()
    assert spare.store.bound == mine.pk
    spares.finished(spare)
    assert not spare_paths.root.exists() and not spare_paths.root.is_symlink()
    assert target.exists()  # the job's folder is the job's to remove


def test_leftovers_of_dead_processes_are_swept(settings, tmp_path):
    settings.JOBS_ROOT = str(tmp_path)
    root = tmp_path / "spares"
    (root / "999999999-dead").mkdir(parents=True)
    (root / f"{os.getppid()}-alive").mkdir()
    (root / "999999998-link").symlink_to(tmp_path)
    assert spares.spares_sweep() == 2
    assert [p.name for p in root.iterdir()] == [f"{os.getppid()}-alive"]


def test_a_compat_turn_starting_its_session_takes_the_session_layout(settings, tmp_path):
    from jobs.sessions import session_workdir

    settings.JOBS_ROOT = str(tmp_path)
    session = uuid.uuid4()
    fresh = job(session_id=session, options={"cwd": str(session_workdir(session))})
    assert spares.layout_of(fresh) == spares.SESSION_LAYOUT
    resumed = job(session_id=session, options={"cwd": str(session_workdir(session)), "resume": "abc"})
    assert spares.layout_of(resumed) is None
    paths = JobPaths(root=tmp_path / "spares" / "1-abc")
    assert spares._key_for(fresh, paths, spares.SESSION_LAYOUT) != spares._key_for(
        fresh, paths, spares.JOB_LAYOUT
    )


def test_with_no_room_the_kind_least_in_demand_gives_up_its_spare(tmp_path):
    def spare(kind: str, started: float) -> spares.Spare:
        made = spares.Spare(paths=JobPaths(root=tmp_path / kind), template=job(), kind=kind)
        made.started = started
        return made

    jobs_api, compat = spare("jobs", 1.0), spare("compat", 2.0)
    pool, demand = [jobs_api, compat], {"jobs": 1.8, "compat": 1.7, "streamed": 0.9}
    # A kind already waiting: nothing to do; room left: start one.
    assert spares.room_for("jobs", pool, demand, 2) == (False, None)
    assert spares.room_for("streamed", pool, demand, 3) == (True, None)
    # Full: a rarer kind does not push out the two a worker runs most ...
    assert spares.room_for("streamed", pool, demand, 2) == (False, None)
    # ... a kind in more demand replaces the least wanted one.
    demand["streamed"] = 1.75
    assert spares.room_for("streamed", pool, demand, 2) == (True, compat)
