"""Fingerprints of a conversation's client-visible history (live sessions, issue 18).

A session's next turn may continue its conversation (a live CLI, or a resume
from the stored transcript) only if the history the client sends is the one
that conversation holds. Each turn records:

- ``history_fp``: the fingerprint of the history it was built on (system text
  and every message before the new turn), set only when the client sent one;
- ``turn_fp``: the fingerprint of that history plus the new turn.

When the turn completes, the session remembers ``turn_fp`` extended by the
assistant's answer in each form a client may send it back
(``answer_fingerprints``). The next turn's ``history_fp`` must be one of
them, else the client edited or dropped an earlier message and the turn
starts afresh from what the client sent.

The fingerprint is a hash chain over (role, text, attached files' bytes).
Text is compared without any whitespace, so OpenAI's and Anthropic's message
shapes (a string, or text parts/blocks joined by newlines) and a client's
trimming or re-wrapping of an answer give the same fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol


class FingerprintTurn(Protocol):
    role: str
    text: str
    files: list  # each with ``.data`` (bytes)


def _norm(text: str) -> str:
    return "".join((text or "").split())


def step(fp: str, role: str, text: str, files: Iterable[bytes] = ()) -> str:
    h = hashlib.sha256()
    h.update(fp.encode())
    h.update(b"\x00" + role.encode() + b"\x00")
    h.update(_norm(text).encode("utf-8", "surrogatepass"))
    for data in files:
        h.update(b"\x00file:" + hashlib.sha256(data).hexdigest().encode())
    return h.hexdigest()[:40]


def chain(system: str, turns: Iterable[FingerprintTurn]) -> str:
    fp = step("", "system", system)
    for turn in turns:
        fp = step(fp, turn.role, turn.text, [f.data for f in turn.files])
    return fp


def answer_fingerprints(turn_fp: str, answers: Iterable[str]) -> list[str]:
    """What the next turn's ``history_fp`` is when the client sends one of ``answers`` back."""
    out: list[str] = []
    for text in answers:
        fp = step(turn_fp, "assistant", text)
        if text is not None and fp not in out:
            out.append(fp)
    return out
