"""The queue: which pending job starts next, and the claim that starts it.

The jobs table is the queue. ``job_claim_next`` picks fairly between owners
(API keys, JWT users) and moves the job to running by compare-and-set;
``job_claim`` does the same for one given job (a child job its parent runs
inline); ``job_claim_session_turn`` claims the next turn of the live sessions
a worker holds (``jobs.live``). Moved here from ``jobs.services`` (the job
lifecycle stays there).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import (
    BooleanField,
    Count,
    DecimalField,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.live_routing import claimable_filter
from jobs.models import Job, JobStatus
from jobs.outcomes import error_event
from jobs.progress import JobProgress
from jobs.services import _next_seq_of, _owner_lock, _owner_of, job_transition, owner_limits, worker_name
from jobs.usage import budget_refusal, budget_remaining

logger = logging.getLogger(__name__)


def _claimable(worker: str | None = None):
    """Pending jobs the queue may start now: not a turn of a session that has one
    running, not a child job (its parent's worker claims and runs it, ``tasks.run_child_job``),
    not a turn of a session whose live CLI a worker holds, unless ``worker`` (its poller) does
    (``jobs.live_routing``)."""
    busy_sessions = Job.objects.filter(status=JobStatus.RUNNING, session__isnull=False).values("session_id")
    pending = Job.objects.filter(status=JobStatus.PENDING, parent__isnull=True).exclude(
        session_id__in=busy_sessions
    )
    return claimable_filter(pending, worker)


# -- per-owner limits (fair sharing) ------------------------------------------------------


@dataclass(frozen=True)
class _OwnerQueue:
    """One owner with claimable work, as the fair claim sees it."""

    api_key_id: int | None
    user_id: int | None
    running: int
    top_priority: int
    oldest: Any
    max_running: int
    across_keys: bool
    has_budget: bool

    def order(self) -> tuple:
        # Fewest running first; a key's priority counts against other keys only
        # when the admin allowed it; then whoever has waited longest.
        return (self.running, -(self.top_priority if self.across_keys else 0), self.oldest)


def _owner_queues() -> list[_OwnerQueue]:
    """Every owner with a pending job, its running count and its next job's
    priority and age, in one query, fastest first.

    It walks the owners (keys, and users for JWT jobs) rather than the pending
    jobs: per owner an EXISTS, a count of its running jobs and the top of its
    queue, each an index probe on ``(owner, status, -priority, created_at)``.
    So it costs the same with fifty or fifty thousand jobs waiting. Whether
    the owner's next job is held back by its session is for ``_claim_from``.
    """
    from django.contrib.auth import get_user_model

    from apikeys.models import ApiKey

    def queue_of(owner_field: str, **extra):
        pending = Job.objects.filter(
            **{owner_field: OuterRef("pk")}, status=JobStatus.PENDING, parent__isnull=True, **extra
        ).order_by("-priority", "created_at")
        running = (
            Job.objects.filter(**{owner_field: OuterRef("pk")}, status=JobStatus.RUNNING, **extra)
            .order_by()
            .values(owner_field)
            .annotate(n=Count("pk"))
            .values("n")
        )
        return {
            "running": Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
            "top": Subquery(pending.values("priority")[:1]),
            "head_at": Subquery(pending.values("created_at")[:1]),
        }, Exists(pending)

    key_fields, key_waiting = queue_of("api_key")
    keys = (
        ApiKey.objects.filter(key_waiting)
        .annotate(**key_fields, user_ref=Value(None, output_field=IntegerField()))
        .values_list(
            "pk",
            "user_ref",
            "running",
            "top",
            "head_at",
            "max_running_jobs",
            "priority_across_keys",
            "budget_daily_usd",
            "budget_monthly_usd",
        )
        .order_by()
    )
    user_fields, user_waiting = queue_of("user", api_key__isnull=True)
    users = (
        get_user_model()
        .objects.filter(user_waiting)
        .annotate(
            **user_fields,
            key_ref=Value(None, output_field=IntegerField()),
            cap=Value(None, output_field=IntegerField()),
            across=Value(False, output_field=BooleanField()),
            daily=Value(None, output_field=DecimalField(max_digits=12, decimal_places=4)),
            monthly=Value(None, output_field=DecimalField(max_digits=12, decimal_places=4)),
        )
        .values_list("key_ref", "pk", "running", "top", "head_at", "cap", "across", "daily", "monthly")
        .order_by()
    )
    queues = []
    for api_key_id, user_id, running, top, head_at, cap, across, daily, monthly in keys.union(
        users, all=True
    ):
        queues.append(
            _OwnerQueue(
                api_key_id=api_key_id,
                user_id=user_id,
                running=running,
                top_priority=top or 0,
                oldest=head_at,
                max_running=settings.JOB_MAX_RUNNING_PER_KEY if cap is None else cap,
                across_keys=bool(across),
                has_budget=daily is not None or monthly is not None,
            )
        )
    return sorted(queues, key=_OwnerQueue.order)


def job_claimable_exists() -> bool:
    """Whether a pending job could start now (the sweep wakes a worker if so): one
    whose session has no running turn, of an owner below its running cap."""
    for queue in _owner_queues():
        if queue.max_running and queue.running >= queue.max_running:
            continue
        if _claimable().filter(_owner_of(api_key_id=queue.api_key_id, user_id=queue.user_id)).exists():
            return True
    return False


def job_claim_next(*, worker: str | None = None, only_sessions: list | None = None) -> Job | None:
    """Move the next pending job to running, fairly between owners, or return None.

    The next job comes from the owner (API key, or JWT user) with the fewest
    running jobs, so one key's backlog delays another key's job by one job
    slot at most; among owners with as many running, a key the admin allowed
    to (``ApiKey.priority_across_keys``) goes first by its jobs' priority,
    then the owner who has waited longest. Within the owner, its highest
    priority, then its oldest job. An owner at its running cap
    (``max_running_jobs``) is skipped; one whose budget is spent has its
    pending jobs refused (cancelled, ``budget_exceeded``); a job that starts
    gets the key's remaining budget as its spending cap (``max_budget_usd``).

    The compare-and-set makes a job start at most once even when two workers
    (or a redelivered task) race; the running cap and budget are checked
    under the owner's lock in the same transaction as the claim, and so is
    the order: an owner another worker started a job for since the order was
    read is ordered again (else two workers free at once would both serve
    the owner who came first before either claim).

    The turns of one session run one after the other: a session's job is not
    claimed while another of its jobs runs, and since every worker picks the
    first claimable job in the same order, racing workers pick the same
    (earliest) turn and only one of them gets it. The update repeats the
    condition, so a turn never starts beside a running one.

    ``only_sessions`` (live sessions, ``jobs.live``): claim only turns of these
    sessions (the poller of the worker holding their live CLIs).
    """
    worker = worker or worker_name()
    for _ in range(20):
        queues = [q for q in _owner_queues() if not q.max_running or q.running < q.max_running]
        if not queues:
            return None
        raced = False
        for queue in queues:
            job, lost_race = _claim_from(queue, worker, only_sessions)
            if job is not None:
                return job
            raced = raced or lost_race
        if not raced:
            return None
    return None


def _claim_from(queue: _OwnerQueue, worker: str, only_sessions=None) -> tuple[Job | None, bool]:
    """Claim the owner's next job; (the job or None, whether another worker interfered)."""
    owner = _owner_of(api_key_id=queue.api_key_id, user_id=queue.user_id)
    # Only these sessions' turns, if given; the running cap below still counts all of the owner's jobs.
    mine = owner & Q(session_id__in=only_sessions) if only_sessions is not None else owner
    # A held session's turns are its holder's poller's alone: the holder's task loop leaves them
    # too (they run beside it, not in its job slot, which a turn held by the upstream could fill).
    holder = worker if only_sessions is not None else None
    candidate = (
        _claimable(holder)
        .filter(mine)
        .order_by("-priority", "created_at", "pk")
        .values_list("pk", flat=True)
        .first()
    )
    if candidate is None:
        # Taken meanwhile, or its next turn waits for its session: the next owner's turn.
        return None, False
    with transaction.atomic():
        # The owner's lock serialises its claims, so its running count read under it is current.
        # More running than the order saw: another worker claimed one of its jobs meanwhile (two
        # workers free at once both read the order first), so it may no longer come first (a
        # key with fewer running waits): order again. Its running cap is checked on the same count.
        _owner_lock(api_key_id=queue.api_key_id, user_id=queue.user_id)
        running = Job.objects.filter(owner, status=JobStatus.RUNNING).count()
        if running > queue.running:
            return None, True
        if queue.max_running and running >= queue.max_running:
            return None, False
        cap = None
        if queue.has_budget:
            from apikeys.models import ApiKey

            key = ApiKey.objects.get(pk=queue.api_key_id)
            refusal = budget_refusal(key)
            if refusal is not None:
                _jobs_refuse_pending(owner=owner, message=refusal.message, code="budget_exceeded")
                return None, False
            cap = budget_remaining(key)
        now = timezone.now()
        claimed = (
            _claimable(holder)
            .filter(pk=candidate)
            .update(
                status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker, max_budget_usd=cap
            )
        )
    if not claimed:
        return None, True
    logger.info("job %s claimed by %s", candidate, worker)
    return Job.objects.get(pk=candidate), False


def job_claim_session_turn(*, worker: str, session_ids: list) -> Job | None:
    """Move the next pending turn of one of these live sessions to running, or return None.

    The claim of the poller of the worker holding these sessions' live CLIs
    (``jobs.live``), rung by the web for each of their turns: it goes straight
    to those sessions' turns instead of walking every owner's queue as
    ``job_claim_next`` does. Only sessions whose row still names ``worker``
    as their holder count (a session another worker took over is its).

    The rules stay those of the fair claim:

    - a session's turns run one after the other: its earliest pending turn is
      the candidate, and the compare-and-set moves it only while no other
      turn of the session runs;
    - never a child job (its parent runs it, ``tasks.run_child_job``);
    - the owner's running cap (``max_running_jobs``, else
      ``JOB_MAX_RUNNING_PER_KEY``) counts all of its running jobs, under the
      owner's lock, in the same transaction as the claim;
    - an owner with a budget (daily or monthly) goes through ``job_claim_next``
      restricted to the session, where budgets are refused and capped.

    Among the sessions, the earliest turn first: each of them has a CLI of its
    own on this worker, so none waits for another's slot.

    The claimed job's ``other_turns_waiting`` says whether a turn of another of
    these sessions was pending too (the poller looks again at once only then).
    """
    if not session_ids:
        return None
    running_turn = Job.objects.filter(session_id=OuterRef("session_id"), status=JobStatus.RUNNING)
    # The sessions this worker holds, not a list of ids in the query: the fallback poll runs
    # it several times a second, and the holder's sessions' pending turns are few.
    turns = (
        Job.objects.filter(
            ~Exists(running_turn),
            status=JobStatus.PENDING,
            parent__isnull=True,
            session__live_worker=worker,
        )
        # The session too: the turn's start reads it (``sessions.session_job_start``).
        .select_related("api_key", "session")
        .order_by("-priority", "created_at", "pk")
    )
    wanted = set(session_ids)
    tried = set()
    candidates = [turn for turn in turns if turn.session_id in wanted]  # a busy CLI's turn waits
    for i, turn in enumerate(candidates):
        if turn.session_id in tried:
            continue  # a later turn of a session waits for its earliest
        tried.add(turn.session_id)
        key = turn.api_key
        if key is not None and (key.budget_daily_usd is not None or key.budget_monthly_usd is not None):
            claimed = job_claim_next(worker=worker, only_sessions=[turn.session_id])
        else:
            claimed = _claim_turn(turn, worker=worker)
        if claimed is not None:
            claimed.other_turns_waiting = any(t.session_id not in tried for t in candidates[i + 1 :])
            return claimed
    return None


def _claim_turn(turn: Job, *, worker: str) -> Job | None:
    """Compare-and-set one session turn (read just before) to running, within its owner's running cap."""
    _, max_running = owner_limits(turn.api_key)
    with transaction.atomic():
        if max_running:
            _owner_lock(api_key_id=turn.api_key_id, user_id=turn.user_id)
            owner = _owner_of(api_key_id=turn.api_key_id, user_id=turn.user_id)
            if Job.objects.filter(owner, status=JobStatus.RUNNING).count() >= max_running:
                return None
        now = timezone.now()
        session_busy = Exists(Job.objects.filter(session_id=turn.session_id, status=JobStatus.RUNNING))
        fields = {
            "status": JobStatus.RUNNING,
            "started_at": now,
            "heartbeat_at": now,
            "worker": worker,
            "max_budget_usd": None,
        }
        claimed = Job.objects.filter(~session_busy, pk=turn.pk, status=JobStatus.PENDING).update(**fields)
    if not claimed:
        return None
    logger.info("job %s claimed by %s", turn.pk, worker)
    # Nothing else changes a pending job's row (a cancel moves its status, which the update checked).
    for name, value in fields.items():
        setattr(turn, name, value)
    return turn


def _jobs_refuse_pending(*, owner: Q, message: str, code: str) -> int:
    """End an owner's pending jobs as cancelled with ``message`` (they would be refused anyway)."""
    refused = 0
    for job_id in Job.objects.filter(owner, status=JobStatus.PENDING).values_list("pk", flat=True):
        if job_transition(
            job_id=job_id, frm=JobStatus.PENDING, to=JobStatus.CANCELLED, error_message=message
        ):
            JobProgress(job_id, start_seq=_next_seq_of(job_id)).emit(
                "error", dict(error_event(code, message))
            )
            refused += 1
    if refused:
        logger.info("%d pending job(s) refused: %s", refused, message)
    return refused


def job_claim(*, job_id: uuid.UUID, worker: str | None = None) -> Job | None:
    """Move one given pending job to running (compare-and-set), or return None.

    For work that runs a job inline instead of through the queue, such as the
    Claude steps of a transcription job.
    """
    worker = worker or worker_name()
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker
    )
    if not claimed:
        return None
    logger.info("job %s claimed by %s", job_id, worker)
    return Job.objects.get(pk=job_id)
