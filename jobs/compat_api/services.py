"""Compat API services: the writes a compat call makes, each in one transaction.

The views parse a request into a ``Conversation`` and call one of these; the
answer is translated back by the format modules. (HackSoft's styleguide: input
serializer → one transactional service → output.)
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction

from claudesvc.auth import Caller
from jobs import live_routing
from jobs.compat_api.catalog import max_tokens_for
from jobs.compat_api.conversation import Conversation
from jobs.compat_api.fingerprint import conversation_fingerprints
from jobs.models import Job
from jobs.services import job_create
from jobs.sessions import session_for_call, session_resume_id
from jobs.wakeup import holder_ring

RCA_SYSTEM_PROMPT = (
    "You are an experienced site reliability engineer doing a root cause analysis. "
    "From the incident details, give: the most likely root cause and the evidence for it, "
    "how to fix it now, and how to prevent it. Say what information would confirm or rule out your analysis."
)


@transaction.atomic
def compat_turn_create(
    *,
    caller: Caller,
    conversation: Conversation,
    model: str,
    max_tokens: int | None,
    session_key: str | None,
    extra: dict[str, Any],
) -> Job:
    """One compat turn as a job of the caller's session (made if new).

    A session that already has a Claude Code conversation resumes it: only the
    new turn goes to the CLI. Otherwise the whole conversation goes, and should
    an earlier turn of the session finish first, the worker resumes that one
    with ``resume_prompt`` instead.
    """
    session = session_for_call(caller=caller, external_id=session_key, model=model)
    resuming = bool(session_resume_id(session.pk))
    # The worker decides between continuing (the session's live CLI, or a resume)
    # and a fresh start, by the fingerprint of the history sent (jobs.history);
    # so the job keeps the full prompt, and the history's files, for a fresh start.
    fingerprints = conversation_fingerprints(conversation)
    options = {
        "partial_messages": True,
        "max_tokens": max_tokens_for(model, max_tokens).value,
        "cwd": session.cwd,
        "inline_files": [
            f.as_option()
            for f in conversation.files(with_history=not resuming or "history_fp" in fingerprints)
        ],
        **fingerprints,
        # A session the caller named may get a next turn: its CLI may stay alive for it (jobs.live).
        **({"live_session": True} if session_key is not None else {}),
        **extra,
    }
    if conversation.history:
        # Continued (resumed, or on its live CLI), the turn sends the new messages alone.
        options["resume_prompt"] = conversation.turn_prompt()
    holder = live_routing.session_holder(session)
    job = job_create(
        caller=caller,
        prompt=conversation.full_prompt(),
        model=model,
        source="compat",
        system_prompt=conversation.system,
        options=options,
        session=session,
        # The worker holding the session's live CLI claims its turns: no wake-up for the others.
        enqueue=holder is None,
    )
    if holder is not None:
        # Its poller claims the turn at once (a lost ring: at its next fallback poll).
        transaction.on_commit(partial(holder_ring, holder))
    return job


@transaction.atomic
def compat_rca_create(*, caller: Caller, prompt: str, model: str, max_tokens: int | None) -> Job:
    """A root cause analysis of an incident description: one job, no session."""
    return job_create(
        caller=caller,
        prompt=prompt,
        model=model,
        source="compat",
        system_prompt=RCA_SYSTEM_PROMPT,
        options={"partial_messages": True, "max_tokens": max_tokens_for(model, max_tokens).value},
    )
