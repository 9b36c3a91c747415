"""Claude sessions: conversations of the compat API that keep their context.

A session is a row owned by one caller, named by the caller (``X-Request-ID``,
``metadata.user_id``) or by the service. Each call on it is a job linked to
the session. The worker:

- runs a session's jobs one after the other (``queue.job_claim_next`` does
  not start a session's job while another of its jobs runs);
- starts each job in the session's working directory on that host and resumes
  the Claude Code conversation the session's latest completed job left
  (``session_job_start``), so only the new turn has to be sent;
- keeps the conversation in the database (``session_store_options``: the
  SDK's ``SessionStore`` on ``TranscriptEntry`` rows), so any worker host can
  run the next turn; the CLI's files on a host are only a cache;
- wakes the next waiting turn when one ends (``session_job_finished``).

Sessions idle for ``COMPAT_SESSION_IDLE_MINUTES`` are removed with their
conversation by a schedule (``session_clean_idle``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from claudesvc.auth import Caller
from claudesvc.errors import Conflict, NotFound, ServiceError
from jobs import live_routing
from jobs.inline_files import inline_files_write
from jobs.models import ACTIVE_STATUSES, FINAL_STATUSES, ClaudeSession, Job, JobStatus, TranscriptEntry
from jobs.session_store import DatabaseSessionStore
from jobs.workspace import OUTPUT_DIR_NAME, job_paths, session_home

logger = logging.getLogger(__name__)

# Safe in headers, logs and response ids; wide enough for e-mail-like user ids.
SESSION_ID = re.compile(r"^[A-Za-z0-9._:@+\-]{1,128}$")


def session_check_id(value: object, *, field: str) -> str:
    """A caller-chosen session id: 1-128 letters, digits or ``._:@+-``."""
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise ServiceError(
            f"{field} must be 1-128 characters of letters, digits, '.', '_', ':', '@', '+' or '-'",
            field=field,
        )
    return value


def _new_external_id() -> str:
    return f"sess_{uuid.uuid4().hex}"


def session_workdir(pk: uuid.UUID) -> Path:
    """Where a session's turns run on this host (under this host's ``JOBS_ROOT``)."""
    return Path(settings.JOBS_ROOT) / "sessions" / str(pk)


def _new_session(*, caller: Caller, external_id: str, model: str) -> ClaudeSession:
    pk = uuid.uuid4()
    return ClaudeSession.objects.create(
        pk=pk,
        **caller.owner_fields(),
        external_id=external_id,
        model=model,
        cwd=str(session_workdir(pk)),
        last_activity=timezone.now(),
    )


def session_for_call(*, caller: Caller, external_id: str | None, model: str) -> ClaudeSession:
    """The caller's session named ``external_id`` (made if new), or a new one if None."""
    if external_id is None:
        return _new_session(caller=caller, external_id=_new_external_id(), model=model)
    now = timezone.now()
    session = ClaudeSession.objects.filter(caller.owns(), external_id=external_id).first()
    if session is None:
        try:
            with transaction.atomic():
                return _new_session(caller=caller, external_id=external_id, model=model)
        except IntegrityError:
            # Another call made it a moment ago.
            session = ClaudeSession.objects.get(caller.owns(), external_id=external_id)
    ClaudeSession.objects.filter(pk=session.pk).update(last_activity=now, model=model)
    session.last_activity, session.model = now, model
    return session


def session_create(*, caller: Caller, external_id: str | None, model: str) -> ClaudeSession:
    if (
        external_id is not None
        and ClaudeSession.objects.filter(caller.owns(), external_id=external_id).exists()
    ):
        raise Conflict(f"Session {external_id!r} already exists", field="sessionId", code="session_exists")
    try:
        with transaction.atomic():
            return _new_session(caller=caller, external_id=external_id or _new_external_id(), model=model)
    except IntegrityError:
        raise Conflict(
            f"Session {external_id!r} already exists", field="sessionId", code="session_exists"
        ) from None


def session_list(*, caller: Caller) -> QuerySet[ClaudeSession]:
    return ClaudeSession.objects.filter(caller.owns()).order_by("-last_activity")


def session_get(*, caller: Caller, external_id: str) -> ClaudeSession:
    session = ClaudeSession.objects.filter(caller.owns(), external_id=external_id).first()
    if session is None:
        raise NotFound("Session not found")
    return session


def session_busy_ids(sessions: list[ClaudeSession]) -> set[uuid.UUID]:
    """Which of these sessions have a turn waiting or running."""
    return set(
        Job.objects.filter(session__in=sessions, status__in=ACTIVE_STATUSES).values_list(
            "session_id", flat=True
        )
    )


def _remove_files(cwd: str, claude_ids: set[str]) -> None:
    """This host's cache of the session: its working directory and the CLI's own
    transcript files. The conversation itself (``TranscriptEntry`` rows) goes with
    the session's row; what other hosts cached is theirs to lose."""
    shutil.rmtree(cwd, ignore_errors=True)
    projects = Path(settings.CLAUDE_HOME) / ".claude" / "projects"
    for claude_id in claude_ids:
        if not re.fullmatch(r"[0-9a-fA-F-]{8,64}", claude_id):
            continue
        for path in projects.glob(f"*/{claude_id}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def session_delete(*, session: ClaudeSession) -> None:
    """Stop the session's waiting and running turns, delete it and its files.

    Its jobs stay (with their results and usage), no longer linked to it.
    """
    from jobs.services import job_cancel

    for job in Job.objects.filter(session=session, status__in=ACTIVE_STATUSES):
        try:
            job_cancel(job=job)
        except Conflict:
            continue  # it finished meanwhile
    claude_ids = set(
        Job.objects.filter(session=session)
        .exclude(claude_session_id="")
        .values_list("claude_session_id", flat=True)
    )
    if session.claude_session_id:
        claude_ids.add(session.claude_session_id)
    pk, cwd = session.pk, str(session_workdir(session.pk))
    ClaudeSession.objects.filter(pk=pk).delete()
    _remove_files(cwd, claude_ids)
    shutil.rmtree(session_home(pk), ignore_errors=True)  # the session's CLI home (issue 11)
    logger.info("session %s deleted", pk)


def session_clean_idle() -> int:
    """Delete sessions without a call for ``COMPAT_SESSION_IDLE_MINUTES`` and with nothing running."""
    cutoff = timezone.now() - timedelta(minutes=settings.COMPAT_SESSION_IDLE_MINUTES)
    idle = ClaudeSession.objects.filter(last_activity__lt=cutoff).exclude(
        pk__in=Job.objects.filter(status__in=ACTIVE_STATUSES, session__isnull=False).values("session_id")
    )
    removed = 0
    for session in idle:
        session_delete(session=session)
        removed += 1
    if removed:
        logger.info("removed %s idle session(s)", removed)
    return removed


# -- the worker's side ---------------------------------------------------------------------


def session_resume_id(session_id: uuid.UUID, *, exclude_job: uuid.UUID | None = None) -> str:
    """The Claude Code conversation to continue: the one the session's latest completed turn left.

    Read from the jobs (their status and ``claude_session_id`` are written in one
    update when they finish), so the next turn sees it as soon as it may start.
    """
    return _latest_completed(session_id, exclude_job=exclude_job)[1]


def _latest_completed(session_id: uuid.UUID, *, exclude_job: uuid.UUID | None = None) -> tuple[Any, str]:
    """(job id, Claude Code conversation) of the session's latest completed turn, or (None, "")."""
    latest = (
        Job.objects.filter(session_id=session_id, status=JobStatus.COMPLETED)
        .exclude(claude_session_id="")
        .exclude(pk=exclude_job)
        .order_by("-finished_at")
        .values_list("pk", "claude_session_id")
        .first()
    )
    return latest or (None, "")


def session_job_start(job: Job) -> None:
    """Prepare a claimed job of a session: working directory, inline files, what to resume.

    The working directory is this host's (``session_workdir``), not the one the
    session was made with: the conversation comes from the database
    (``session_store_options``), so the turn needs nothing another host left on disk.
    """
    # Read with the job by the claim of a live session's holder (``queue.job_claim_session_turn``).
    session = (
        job.session if Job.session.is_cached(job) else ClaudeSession.objects.filter(pk=job.session_id).first()
    )
    options = dict(job.options or {})
    prompt = job.prompt
    if session is not None:
        cwd = session_workdir(session.pk)
        options["cwd"] = str(cwd)
        latest_job, resume = _latest_completed(session.pk, exclude_job=job.pk)
        # live sessions hook (jobs/live_routing.py): a history the client changed starts afresh.
        resume = live_routing.session_turn_start(job, session, options, resume, latest_job=latest_job)
        if resume:
            options["resume"] = resume
            # The conversation so far is in the transcript: send only the new turn.
            prompt = options.get("resume_prompt") or prompt
    else:
        # The session was deleted while this job waited: run it on its own.
        cwd = job_paths(job.pk).work
        options["cwd"] = str(cwd)
        options.pop("resume", None)
    (cwd / OUTPUT_DIR_NAME).mkdir(parents=True, exist_ok=True)
    options = inline_files_write(options, cwd)
    Job.objects.filter(pk=job.pk).update(options=options, prompt=prompt)
    job.options, job.prompt = options, prompt


# Turns whose record committed with their final status (``session_job_record_final``): the
# fallback after the run (``session_job_finished_after_run``) has nothing left to do for them.
# Per process: a run and its fallback happen in the same one.
_recorded_with_final: set[uuid.UUID] = set()


def session_job_record_final(job: Job) -> None:
    """``session_job_finished`` in the transaction of the turn's final status (the runner's
    ``job_transition(then=…)``): whoever sees the turn end sees its record. Once that
    transaction commits, the fallback after the run is spared."""
    session_job_finished(job)
    transaction.on_commit(partial(_recorded_with_final.add, job.pk))


def session_job_finished_after_run(job: Job) -> None:
    """After a run, whatever happened (``tasks._run``): the turn's record, unless it committed
    with the final status already; runs that never reached it (the turn broke off, its status
    was moved elsewhere) need it here."""
    if job.pk in _recorded_with_final:
        _recorded_with_final.discard(job.pk)
        return
    session_job_finished(job)


def session_job_finished(job: Job) -> None:
    """After a turn: remember the conversation it left, and wake the session's next turn."""
    from jobs.services import job_enqueue

    if job.session_id is None:
        return
    finished = (
        Job.objects.filter(pk=job.pk)
        .values("status", "claude_session_id", "options", "result", "created_at")
        .first()
    )
    if finished and finished["status"] != JobStatus.COMPLETED:
        session_prune_unfinished(job.session_id)
    updates: dict[str, Any] = {"last_activity": timezone.now()}
    # A late call (a fallback after the run, ``session_job_finished_after_run``) may come after a
    # later turn started: that turn has the last word (one that never started, cancelled or
    # refused while waiting, does not).
    later = (
        finished is not None
        and Job.objects.filter(
            session_id=job.session_id, created_at__gt=finished["created_at"], started_at__isnull=False
        )
        .exclude(status=JobStatus.PENDING)
        .exists()
    )
    if not later:
        if finished and finished["status"] == JobStatus.COMPLETED and finished["claude_session_id"]:
            updates["claude_session_id"] = finished["claude_session_id"]
        # live sessions hook (jobs/live_routing.py): the history the client will send next.
        updates.update(live_routing.session_finished_updates(job.pk, finished))
    ClaudeSession.objects.filter(pk=job.session_id).update(**updates)
    if Job.objects.filter(session_id=job.session_id, status=JobStatus.PENDING).exists():
        # Its token may have found the session busy and gone: hand the broker a new one, once
        # this turn's end is committed (called in its final status's transaction, a worker woken
        # before the commit would find the session still busy).
        transaction.on_commit(job_enqueue)


def session_prune_unfinished(session_id: uuid.UUID) -> int:
    """Delete the stored lines of the session's turns that ended without completing.

    A resume already skips them (``DatabaseSessionStore``); deleting them keeps
    it so once their jobs are gone too (retention, deletion), when nothing
    would tell them apart from the completed turns' lines any more. Whoever
    ends a turn that way calls it: its worker (``session_job_finished``), or,
    when the worker could not, the reaper (``jobs.reaper``).
    """
    deleted, _ = TranscriptEntry.objects.filter(
        session_id=session_id, writer__status__in=[s for s in FINAL_STATUSES if s != JobStatus.COMPLETED]
    ).delete()
    if deleted:
        logger.info(
            "session %s: dropped %s transcript line(s) of turns that did not complete", session_id, deleted
        )
    return deleted


def session_store_options(job: Job, options: ClaudeAgentOptions) -> ClaudeAgentOptions:
    """The runner's options for ``job``, with its conversation kept in the database.

    Every transcript line the CLI writes is mirrored into ``TranscriptEntry``
    rows owned by the job's session (or by the job itself when it has none),
    flushed before the turn's result reaches the runner. A resume
    (``options.resume``, set by ``session_job_start``) is rebuilt from those
    rows in a temporary config directory by the SDK, so it works on any host
    and whether or not this host still has the CLI's own files.
    """
    if job.session_id is not None:
        store = DatabaseSessionStore(session_id=job.session_id, writer_id=job.pk, workdir=options.cwd)
    else:
        store = DatabaseSessionStore(job_id=job.pk, writer_id=job.pk, workdir=options.cwd)
    env = dict(options.env)
    # The SDK finds the transcript files it mirrors under CLAUDE_CONFIG_DIR (else
    # the worker's own ~/.claude), and a resume copies the CLI's settings and
    # credentials from there: name the config directory the CLI really uses.
    env.setdefault("CLAUDE_CONFIG_DIR", str(Path(env.get("HOME") or settings.CLAUDE_HOME) / ".claude"))
    allowed = json.loads(env.get("CLAUDESVC_ENV_ALLOW") or "[]")
    if "CLAUDE_CONFIG_DIR" not in allowed:
        # A resume points the CLI at the SDK's temporary config directory through it.
        env["CLAUDESVC_ENV_ALLOW"] = json.dumps([*allowed, "CLAUDE_CONFIG_DIR"])
    return dataclasses.replace(options, session_store=store, session_store_flush="batched", env=env)
