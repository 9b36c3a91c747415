"""How a job's end is told: the messages and the ``error`` event, defined once.

The runner, the transcription pipeline and the services (cancel, reaper) all
end jobs; they word the outcome and shape the error event through here, so a
reader sees the same text whichever of them ended the job.
"""

from __future__ import annotations

from typing import Literal, TypedDict

CANCELLED_MESSAGE = "Cancelled by the caller"
STALE_MESSAGE = "The worker running this job stopped responding; the job was abandoned."


def timeout_message(seconds: float) -> str:
    return f"The job exceeded its timeout of {seconds:g} s and was stopped."


class ErrorEvent(TypedDict):
    """The last event of a job that did not complete (``JobEvent.data`` of type ``error``)."""

    type: Literal["error"]
    error: str  # the final status ("failed", "timeout", "cancelled") or a refusal code
    message: str


def error_event(error: str, message: str) -> ErrorEvent:
    return {"type": "error", "error": str(error), "message": message}
