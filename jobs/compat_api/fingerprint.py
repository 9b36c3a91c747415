"""The fingerprints a compat turn records of the history its client sent
(``jobs.history`` has the hash chain and what it is for)."""

from __future__ import annotations

from jobs.compat_api.conversation import Conversation
from jobs.history import answer_fingerprints, chain

__all__ = ["answer_fingerprints", "conversation_fingerprints"]


def conversation_fingerprints(conversation: Conversation) -> dict[str, str]:
    """The options a compat turn records: ``turn_fp``, and ``history_fp`` if it sent a history."""
    fps = {"turn_fp": chain(conversation.system, [*conversation.history, *conversation.new_turn])}
    if conversation.history:
        fps["history_fp"] = chain(conversation.system, conversation.history)
    return fps
