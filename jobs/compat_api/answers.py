"""Reading a compat job's events as an answer, format-neutral.

Compat jobs run with the CLI's partial messages on, so the job's events carry
the upstream stream (``stream_event``: ``message_start``,
``content_block_delta`` with ``text_delta`` …) as it is generated.
``AnswerTracker`` turns those events into pieces that the OpenAI and Anthropic
encoders render: text as it arrives, block boundaries, and how the answer
ended. It also does what the CLI cannot:

- ``max_tokens``: the CLI answers an upstream ``max_tokens`` stop by asking
  the model to go on (and then fails), where the APIs end the answer with
  ``length``/``max_tokens``. The tracker ends the answer at the first such
  stop; the caller then stops the job.
- stop sequences: the CLI has none; the tracker cuts the text at the first
  one (holding back just enough text to see one that spans two deltas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from claudesvc.errors import Conflict
from jobs.compat_api import structured
from jobs.models import Job, JobStatus
from jobs.streaming import Ended, Idle, follow_job


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_cli(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cache_creation_input_tokens=int(data.get("cache_creation_input_tokens") or 0),
            cache_read_input_tokens=int(data.get("cache_read_input_tokens") or 0),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cached or not (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
        }

    def anthropic(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


# -- pieces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageStart:
    """The model began answering (first upstream message of the job)."""

    usage: Usage


@dataclass(frozen=True)
class BlockStart:
    index: int


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class BlockStop:
    index: int


@dataclass(frozen=True)
class Finish:
    """The answer is complete.

    ``stop_reason`` in Anthropic's words (``end_turn``, ``max_tokens``,
    ``stop_sequence``). ``text`` is the whole answer for non-streaming replies.
    ``truncated``: the answer ended before the job did; the job should be stopped.
    """

    stop_reason: str
    text: str
    usage: Usage
    stop_sequence: str | None = None
    truncated: bool = False

    @property
    def finish_reason(self) -> str:
        """OpenAI's word for it."""
        return "length" if self.stop_reason == "max_tokens" else "stop"


@dataclass(frozen=True)
class Failure:
    """The job ended without an answer."""

    status: str | None
    message: str
    # The model's API's HTTP status when the job failed on it (jobs/upstream.py).
    upstream_status: int | None = None
    upstream_detail: str = ""


Piece = MessageStart | BlockStart | TextDelta | BlockStop | Finish | Failure


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """``text`` up to the earliest stop sequence in it, and that sequence (or None)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


@dataclass
class _Block:
    index: int
    text: str = ""  # sent so far
    held: str = ""  # received, not yet sent: it may be the start of a stop sequence


@dataclass
class AnswerTracker:
    stop_sequences: list[str] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    stop_sequence: str | None = None
    turn_usage: Usage = field(default_factory=Usage)
    done_usage: Usage = field(default_factory=Usage)
    next_index: int = 0
    blocks: dict[int, _Block] = field(default_factory=dict)  # upstream index of this turn -> block
    turn_text: str = ""
    # Structured output asked for: the answer is the run's structured output as
    # JSON, sent whole at the end (what streams by is the model calling a tool).
    schema: dict[str, Any] | None = None

    @property
    def _hold(self) -> int:
        return max((len(s) for s in self.stop_sequences), default=1) - 1

    def feed(self, event: dict[str, Any]) -> list[Piece]:
        """Pieces for one job event (the CLI's stream-json message)."""
        if self.finished or event.get("type") != "stream_event" or event.get("parent_tool_use_id"):
            return []
        inner = event.get("event") or {}
        kind = inner.get("type")
        if kind == "message_start":
            return self._message_start(inner)
        if self.schema is not None:
            return []
        if kind == "content_block_start":
            block = inner.get("content_block") or {}
            if block.get("type") != "text" or self.stop_sequence:
                return []
            self.blocks[inner.get("index", 0)] = _Block(self.next_index)
            self.next_index += 1
            return [BlockStart(self.blocks[inner.get("index", 0)].index)]
        if kind == "content_block_delta":
            delta = inner.get("delta") or {}
            block = self.blocks.get(inner.get("index", 0))
            if block is None or delta.get("type") != "text_delta" or self.stop_sequence:
                return []
            return self._text(block, delta.get("text") or "")
        if kind == "content_block_stop":
            block = self.blocks.pop(inner.get("index", 0), None)
            return self._close(block) if block is not None else []
        if kind == "message_delta":
            return self._message_delta(inner)
        return []

    def _message_start(self, inner: dict[str, Any]) -> list[Piece]:
        self.done_usage = self.done_usage + self.turn_usage
        usage = Usage.from_cli((inner.get("message") or {}).get("usage"))
        self.turn_usage = Usage(
            input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )
        self.blocks = {}
        self.turn_text = ""
        if self.started:
            return []
        self.started = True
        return [MessageStart(self.done_usage + usage)]

    def _text(self, block: _Block, text: str) -> list[Piece]:
        pending = block.held + text
        if self.stop_sequences:
            kept, stop = cut_at_stop(pending, self.stop_sequences)
            if stop is not None:
                self.stop_sequence = stop
                block.held = ""
                return self._send(block, kept)
            split = max(len(pending) - self._hold, 0)
            block.held = pending[split:]
            return self._send(block, pending[:split])
        return self._send(block, pending)

    def _send(self, block: _Block, text: str) -> list[Piece]:
        if not text:
            return []
        block.text += text
        self.turn_text += text
        return [TextDelta(block.index, text)]

    def _close(self, block: _Block) -> list[Piece]:
        held, block.held = block.held, ""
        return [*self._send(block, held), BlockStop(block.index)]

    def _message_delta(self, inner: dict[str, Any]) -> list[Piece]:
        output = (inner.get("usage") or {}).get("output_tokens")
        if output is not None:
            self.turn_usage.output_tokens = int(output)
        if (inner.get("delta") or {}).get("stop_reason") != "max_tokens":
            return []
        pieces: list[Piece] = []
        for block in list(self.blocks.values()):
            pieces.extend(self._close(block))
        self.blocks = {}
        self.finished = True
        stop_reason = "stop_sequence" if self.stop_sequence else "max_tokens"
        text, _ = cut_at_stop(self.turn_text, self.stop_sequences)
        pieces.append(
            Finish(
                stop_reason,
                text,
                self.done_usage + self.turn_usage,
                stop_sequence=self.stop_sequence,
                truncated=True,
            )
        )
        return pieces

    def end(self, job: Job | None) -> list[Piece]:
        """Pieces once the job has ended (``job`` None: it was deleted)."""
        if self.finished:
            return []
        self.finished = True
        pieces: list[Piece] = []
        for block in list(self.blocks.values()):
            pieces.extend(self._close(block))
        self.blocks = {}
        if job is None:
            return [*pieces, Failure(None, "The job was deleted before it answered.")]
        if job.status != JobStatus.COMPLETED:
            message = job.error_message or f"The job ended as {job.status}."
            return [
                *pieces,
                Failure(
                    job.status,
                    message,
                    job.upstream_status,
                    (job.result or message) if job.upstream_status else "",
                ),
            ]
        if self.schema is not None:
            return [*pieces, *self._structured(job)]
        text, stop = cut_at_stop(job.result or "", self.stop_sequences)
        stop = self.stop_sequence or stop
        result_stop = self._result_stop_reason(job)
        reason = "stop_sequence" if stop else ("max_tokens" if result_stop == "max_tokens" else "end_turn")
        pieces.append(Finish(reason, text, Usage.from_cli(job.usage), stop_sequence=stop))
        return pieces

    def _structured(self, job: Job) -> list[Piece]:
        value = self._result(job).get("structured_output")
        problem = structured.answer_error(self.schema or {}, value)
        if problem is not None:
            return [Failure("structured_output", problem)]
        text = json.dumps(value, ensure_ascii=False)
        index = self.next_index
        return [
            BlockStart(index),
            TextDelta(index, text),
            BlockStop(index),
            Finish("end_turn", text, Usage.from_cli(job.usage)),
        ]

    @staticmethod
    def _result(job: Job) -> dict[str, Any]:
        result = job.events.filter(type="result").order_by("-seq").values_list("data", flat=True).first()
        return result or {}

    @classmethod
    def _result_stop_reason(cls, job: Job) -> str | None:
        return cls._result(job).get("stop_reason")


async def _cancel_abandoned(job_id) -> None:
    from jobs.services import job_cancel

    job = await Job.objects.filter(pk=job_id).afirst()
    if job is not None and not job.is_final:
        with contextlib.suppress(Conflict):  # it ended on its own meanwhile
            await sync_to_async(job_cancel)(job=job)


async def answer_pieces(job_id, tracker: AnswerTracker) -> AsyncIterator[Piece | Idle]:
    """Follow a job as answer pieces until it has answered (or failed).

    An answer that ends before its job (``max_tokens``) cancels the job: the
    caller has what it asked for, and the CLI would only go on without it.
    """
    async for item in follow_job(job_id):
        if isinstance(item, Idle):
            yield item
            continue
        if isinstance(item, Ended):
            job = await Job.objects.filter(pk=job_id).afirst()
            for piece in await sync_to_async(tracker.end)(job):
                yield piece
            return
        for piece in tracker.feed(item.data):
            if isinstance(piece, Finish) and piece.truncated:
                await _cancel_abandoned(job_id)
            yield piece
        if tracker.finished:
            return


async def answer_of(
    job_id, tracker: AnswerTracker, *, cancel_on_disconnect: bool = False
) -> Finish | Failure:
    """Wait for a job's whole answer.

    ``cancel_on_disconnect``: if the wait is cancelled (the client went away),
    cancel the job too; nobody is left to read its answer.
    """
    last: Piece | None = None
    try:
        async for piece in answer_pieces(job_id, tracker):
            if isinstance(piece, (Finish, Failure)):
                last = piece
    except asyncio.CancelledError:
        if cancel_on_disconnect:
            await asyncio.shield(_cancel_abandoned(job_id))
        raise
    if last is None:  # follow_job always ends with Ended, and end() always decides
        raise RuntimeError(f"job {job_id} ended without an answer")
    return last
