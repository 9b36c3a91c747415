"""The database side of live sessions (``jobs.live`` has the live CLIs themselves).

Which worker holds a session's live CLI (``ClaudeSession.live_worker`` /
``live_until``), so that the queue leaves that session's next turn to it
(``claimable_filter``, applied by ``jobs.queue``) and the web rings that
worker instead of the queue (``session_holder``); and which conversation a turn may continue: the
session's, only if the history the client sent is the one it holds
(``session_turn_start``, ``session_finished_updates``, hooks of
``jobs.sessions``; the fingerprints are ``jobs.history``'s).

Below the queue, the sessions and the runner: it imports the models alone.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from jobs.history import answer_fingerprints
from jobs.models import ClaudeSession, JobEvent, JobStatus, Worker

logger = logging.getLogger(__name__)


def enabled() -> bool:
    return settings.SESSION_KEEPALIVE_SECONDS > 0


def held_sessions():
    """Sessions whose live CLI a worker with a fresh heartbeat holds, not stopping, lease not over."""
    now = timezone.now()
    fresh = now - timedelta(seconds=2 * settings.JOB_HEARTBEAT_SECONDS + 1)
    alive = Worker.objects.filter(heartbeat_at__gte=fresh, stopping=False).values("name")
    return ClaudeSession.objects.filter(live_until__gt=now, live_worker__in=alive)


def claimable_filter(queryset, worker: str | None):
    """``queryset`` (pending jobs) without the turns of sessions another live worker holds.

    A session is held while its ``live_until`` lies ahead and its ``live_worker``
    has a fresh heartbeat and is not stopping. Its holder's poller (``worker``:
    ``jobs.live``) still sees them; the task loops, its holder's own included, do
    not (``worker`` None): a live turn runs beside the task loop, not in its slot.
    """
    if not enabled():
        return queryset
    held = held_sessions()
    if worker:
        held = held.exclude(live_worker=worker)
    return queryset.exclude(session_id__in=held.values("pk"))


def session_holder(session) -> str | None:
    """The live worker holding ``session`` (its row as just read) now, or None: its
    poller claims the next turn (``compat_turn_create`` rings it instead of waking
    the queue's workers). The same conditions as ``held_sessions``."""
    if not enabled() or not session.live_worker or not session.live_until:
        return None
    now = timezone.now()
    if session.live_until <= now:
        logger.info("session %s: its hold by %s is over", session.pk, session.live_worker)
        return None
    fresh = now - timedelta(seconds=2 * settings.JOB_HEARTBEAT_SECONDS + 1)
    holder = Worker.objects.filter(name=session.live_worker).values("heartbeat_at", "stopping").first()
    if holder is None:
        why = "gone"
    elif holder["stopping"]:
        why = "stopping"
    elif holder["heartbeat_at"] < fresh:
        why = f"last heartbeat {(now - holder['heartbeat_at']).total_seconds():.1f} s ago"
    else:
        return session.live_worker
    # Its next turn goes to the queue and resumes from the store: say why.
    logger.info("session %s: its holder %s no longer counts (%s)", session.pk, session.live_worker, why)
    return None


# -- the worker's side of a session turn (hooks in jobs.sessions) -------------------------------


def session_turn_start(job, session, options: dict[str, Any], resume: str, *, latest_job=None) -> str:
    """What ``session_job_start`` resumes: ``resume``, or "" when the history the
    client sent is not the one the session's conversation holds (an edited or
    dropped message): then the turn starts afresh from the client's full prompt.
    Records in ``options`` which completed job's conversation the turn continues
    (``resume_job``: ``latest_job``, the session's latest completed turn, which
    left ``resume``), which a live CLI must have served to be reused."""
    options.pop("resume_job", None)
    options.pop("history_stale", None)
    sent = options.get("history_fp")
    known = session.history_fps or []
    if resume and sent and known and sent not in known:
        logger.info(
            "job %s: the client's history differs from session %s's; starting afresh", job.pk, session.pk
        )
        options["history_stale"] = True
        options.pop("resume", None)
        return ""
    if resume and latest_job is not None:
        options["resume_job"] = str(latest_job)
    return resume


def _answers(job_id, result: str) -> list[str]:
    """The forms a client may send this job's answer back in (``result``: the job's)."""
    answers = [result or ""]
    texts, structured = [], None
    for kind, data in JobEvent.objects.filter(job_id=job_id, type__in=["assistant", "result"]).values_list(
        "type", "data"
    ):
        if kind == "result":
            structured = (data or {}).get("structured_output", structured)
            continue
        if (data or {}).get("parent_tool_use_id"):
            continue
        for block in ((data or {}).get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "text":
                texts.append(block.get("text") or "")
    answers.append("".join(texts))
    if structured is not None:
        answers.append(json.dumps(structured, ensure_ascii=False))
    return answers


def session_finished_updates(job_id, finished: dict[str, Any] | None) -> dict[str, Any]:
    """Fields of the session's row after a turn: the history fingerprints a completed turn left.

    ``finished``: the job's ``status``, ``options`` and ``result`` as it ended (None: deleted)."""
    if not finished or finished["status"] != JobStatus.COMPLETED:
        return {}
    turn_fp = (finished["options"] or {}).get("turn_fp")
    if not turn_fp:
        return {"history_fps": []}
    return {"history_fps": answer_fingerprints(turn_fp, _answers(job_id, finished["result"]))}
