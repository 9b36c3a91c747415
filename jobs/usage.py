"""Usage accounting and budgets per owner (an API key, or a JWT user).

Every job adds its figures to one ``UsageDaily`` row (owner, UTC day, model,
source) in the same transaction that gives it its final status
(``jobs.services.job_transition`` calls ``usage_record_job_end``). The status
change is a compare-and-set, so a job is counted exactly once however many
workers race to finish it, and totals are sums over a few rows per day
instead of scans of the jobs table.

Budgets (``ApiKey.budget_daily_usd`` / ``budget_monthly_usd``) are checked
against those rows: a job is refused at submit (``budget_check``) and again
at claim when the key has nothing left, and a job that starts is capped to
what is left (``budget_remaining``, handed to the CLI as ``--max-budget-usd``).
Jobs still running are not in the rows yet, so several jobs of one key
running at once may together overshoot by what each was allowed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from claudesvc.errors import BudgetExceeded
from jobs.kinds import job_kind_or_none
from jobs.models import Job, JobSource, JobStatus, UsageDaily

# Child jobs (a transcription's summary, key points) are real spend and are
# counted, but they are not jobs the caller asked for. Rows written before
# ``Job.parent`` existed are told by their source.
_CHILD_SOURCE = JobSource.TRANSCRIPTION

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
SUM_FIELDS = (
    "jobs",
    "completed",
    *TOKEN_FIELDS,
    "cost_usd",
    "audio_seconds",
    "provider_calls",
    "provider_cost_usd",
)


def _owner_q(*, api_key_id, user_id) -> Q:
    if api_key_id is not None:
        return Q(api_key_id=api_key_id)
    return Q(user_id=user_id, api_key__isnull=True)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class Usage:
    """Token usage, cost and turns of one run or the sum of several: the one
    place this arithmetic lives (a kind that runs child jobs sums them here)."""

    tokens: dict[str, int]
    cost_usd: float | None = None
    num_turns: int | None = None

    @classmethod
    def of(cls, usage: Any, cost_usd: float | None = None, num_turns: int | None = None) -> Usage:
        tokens = {
            k: v
            for k, v in (usage if isinstance(usage, dict) else {}).items()
            if isinstance(v, int) and not isinstance(v, bool)
        }
        return cls(tokens=tokens, cost_usd=cost_usd, num_turns=num_turns)

    @classmethod
    def of_job(cls, job: Any) -> Usage:
        return cls.of(job.usage, job.cost_usd, job.num_turns)

    def __add__(self, other: Usage) -> Usage:
        tokens = dict(self.tokens)
        for key, value in other.tokens.items():
            tokens[key] = tokens.get(key, 0) + value

        def plus(a, b):
            return b if a is None else a if b is None else a + b

        return Usage(tokens, plus(self.cost_usd, other.cost_usd), plus(self.num_turns, other.num_turns))

    def job_fields(self) -> dict[str, Any]:
        """As ``Job`` fields (``usage`` None when no tokens were counted)."""
        return {"usage": self.tokens or None, "cost_usd": self.cost_usd, "num_turns": self.num_turns}

    def figures(self) -> dict[str, float | int]:
        """What it adds to a ``UsageDaily`` row."""
        figures: dict[str, float | int] = {name: _int(self.tokens.get(name)) for name in TOKEN_FIELDS}
        figures["cost_usd"] = float(self.cost_usd or 0)
        return figures


def usage_sum(runs: Iterable[Usage]) -> Usage:
    total = Usage(tokens={})
    for run in runs:
        total = total + run
    return total


def _job_figures(job: Job) -> dict[str, float | int]:
    """What one ended job adds to its day's row: a kind may count its own
    figures instead of tokens (``JobKindSpec.usage_figures``: a transcription
    counts audio; its usage and cost repeat its child jobs', counted when they ended)."""
    child = job.parent_id is not None or job.source == _CHILD_SOURCE
    figures: dict[str, float | int] = {
        "jobs": 0 if child else 1,
        "completed": 1 if job.status == JobStatus.COMPLETED and not child else 0,
    }
    spec = job_kind_or_none(job.kind)
    if spec is not None and spec.usage_figures is not None:
        return {**figures, **spec.usage_figures(job)}
    return {**figures, **Usage.of_job(job).figures()}


def usage_record_job_end(*, job_id) -> None:
    """Add an ended job to its owner's row of the day. Call it in the transaction
    that moved the job to its final status, once (the move is a compare-and-set)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or (job.api_key_id is None and job.user_id is None):
        return
    figures = _job_figures(job)
    day = timezone.localdate(job.finished_at or timezone.now(), dt.UTC)
    key = {
        "api_key_id": job.api_key_id,
        "user_id": None if job.api_key_id else job.user_id,
        "day": day,
        "model": job.model[:100],
        "source": job.source[:20],
    }
    increments = {name: F(name) + value for name, value in figures.items() if value}
    # The day's row exists but for an owner's first job of the day: one UPDATE, no savepoint.
    if increments and UsageDaily.objects.filter(**key).update(**increments):
        return
    if not increments and UsageDaily.objects.filter(**key).exists():
        return
    try:
        with transaction.atomic():
            UsageDaily.objects.create(**key, **figures)
    except IntegrityError:
        # Another job of this owner created the day's row first.
        if increments:
            UsageDaily.objects.filter(**key).update(**increments)


# -- reading ------------------------------------------------------------------------------


def usage_rows(*, api_key_id, user_id, start: dt.date, end: dt.date):
    """The owner's rows from ``start`` to ``end`` (both included)."""
    return UsageDaily.objects.filter(
        _owner_q(api_key_id=api_key_id, user_id=user_id), day__gte=start, day__lte=end
    )


def _sums(queryset) -> dict[str, Any]:
    return queryset.aggregate(
        **{name: Coalesce(Sum(name), 0, output_field=_field(name)) for name in SUM_FIELDS}
    )


def _field(name: str):
    return UsageDaily._meta.get_field(name)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) or 0 for name in SUM_FIELDS}
    for name in ("cost_usd", "provider_cost_usd", "audio_seconds"):
        out[name] = round(float(out[name]), 10)
    out["total_cost_usd"] = round(out["cost_usd"] + out["provider_cost_usd"], 10)
    return out


GROUPS = {"day": "day", "model": "model", "source": "source"}


def usage_summary(*, api_key_id, user_id, start: dt.date, end: dt.date, group_by: str) -> dict[str, Any]:
    """Totals of the owner between two days, and one row per ``group_by`` value."""
    rows = usage_rows(api_key_id=api_key_id, user_id=user_id, start=start, end=end)
    column = GROUPS[group_by]
    grouped = (
        rows.order_by().values(column).annotate(**{name: Sum(name) for name in SUM_FIELDS}).order_by(column)
    )
    groups = []
    for row in grouped:
        value = row[column]
        groups.append({group_by: value.isoformat() if isinstance(value, dt.date) else value, **_plain(row)})
    return {"totals": _plain(_sums(rows)), "groups": groups}


# -- budgets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    today: float
    month: float


def owner_spend(*, api_key_id, user_id, today: dt.date | None = None) -> Spend:
    """What the owner spent today and this month (UTC), jobs that ended only."""
    today = today or timezone.localdate(timezone.now(), dt.UTC)
    rows = usage_rows(api_key_id=api_key_id, user_id=user_id, start=today.replace(day=1), end=today)
    total = F("cost_usd") + F("provider_cost_usd")
    sums = rows.aggregate(
        month=Coalesce(Sum(total), 0.0),
        today=Coalesce(Sum(total, filter=Q(day=today)), 0.0),
    )
    return Spend(today=float(sums["today"]), month=float(sums["month"]))


def _budgets(api_key) -> tuple[Decimal | None, Decimal | None]:
    if api_key is None:
        return None, None
    return api_key.budget_daily_usd, api_key.budget_monthly_usd


def budget_remaining(api_key) -> float | None:
    """USD the key may still spend (the smaller of day and month), None without a budget."""
    daily, monthly = _budgets(api_key)
    if daily is None and monthly is None:
        return None
    spend = owner_spend(api_key_id=api_key.pk, user_id=None)
    left = []
    if daily is not None:
        left.append(float(daily) - spend.today)
    if monthly is not None:
        left.append(float(monthly) - spend.month)
    return max(0.0, min(left))


def budget_refusal(api_key) -> BudgetExceeded | None:
    """The error for a key whose budget is spent, or None while something is left."""
    daily, monthly = _budgets(api_key)
    if daily is None and monthly is None:
        return None
    spend = owner_spend(api_key_id=api_key.pk, user_id=None)
    if daily is not None and spend.today >= float(daily):
        return BudgetExceeded(
            f"budget_exceeded: this key's daily budget of ${float(daily):.2f} is spent "
            f"(${spend.today:.4f} today); it renews at 00:00 UTC"
        )
    if monthly is not None and spend.month >= float(monthly):
        return BudgetExceeded(
            f"budget_exceeded: this key's monthly budget of ${float(monthly):.2f} is spent "
            f"(${spend.month:.4f} this month); it renews on the 1st (UTC)"
        )
    return None


def budget_check(api_key) -> None:
    """Raise ``BudgetExceeded`` (402 ``budget_exceeded``) if the key has no budget left."""
    refusal = budget_refusal(api_key)
    if refusal is not None:
        raise refusal
