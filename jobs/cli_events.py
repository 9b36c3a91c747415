"""The SDK's messages as the job's events, in the shape of the CLI's stream-json output."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claude_agent_sdk import AssistantMessage, ResultMessage, StreamEvent, SystemMessage, UserMessage

_BLOCK_TYPES = {
    "TextBlock": "text",
    "ThinkingBlock": "thinking",
    "ToolUseBlock": "tool_use",
    "ToolResultBlock": "tool_result",
    "ServerToolUseBlock": "server_tool_use",
    "ServerToolResultBlock": "server_tool_result",
}


def _plain(value: Any) -> Any:
    """JSON-safe copy of SDK dataclasses, tagging content blocks with their ``type``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        block_type = _BLOCK_TYPES.get(type(value).__name__)
        return {"type": block_type, **data} if block_type else data
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def message_event(message: Any) -> dict[str, Any]:
    """An SDK message in the shape of the CLI's stream-json output."""
    if isinstance(message, SystemMessage):
        return _plain(message.data)
    data = _plain(message)
    if isinstance(message, AssistantMessage):
        return {
            "type": "assistant",
            "message": {
                "id": data.pop("message_id", None),
                "role": "assistant",
                "model": data.pop("model", None),
                "content": data.pop("content"),
                "stop_reason": data.pop("stop_reason", None),
                "usage": data.pop("usage", None),
            },
            **data,
        }
    if isinstance(message, UserMessage):
        return {"type": "user", "message": {"role": "user", "content": data.pop("content")}, **data}
    if isinstance(message, ResultMessage):
        return {"type": "result", **data}
    if isinstance(message, StreamEvent):
        return {"type": "stream_event", **data}
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(message).__name__).lower().removesuffix("_message")
    return {"type": name, **(data if isinstance(data, dict) else {"value": data})}


def init_paths_hidden(event: dict[str, Any], *, cwd: Path, private: Sequence[Path]) -> dict[str, Any]:
    """The CLI's ``system``/``init`` event without the server's absolute paths.

    Paths inside the working directory become relative (``.``, ``./out``);
    other paths under the service's own folders (``JOBS_ROOT``, the CLI home,
    the installation) are left out. A directory the caller named itself (a
    Process API ``workingDirectory``) is theirs to see.
    """
    cwd_text = str(cwd)
    roots = [str(p) for p in private if str(p) not in ("", "/")]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            if value == cwd_text or value.startswith(cwd_text + "/"):
                return "." + value[len(cwd_text) :]
            if any(value == r or value.startswith(r + "/") for r in roots):
                return None
            return value
        if isinstance(value, dict):
            kept = {k: clean(v) for k, v in value.items()}
            return {k: v for k, v in kept.items() if v is not None or value[k] is None}
        if isinstance(value, list):
            return [c for c in (clean(v) for v in value) if c is not None]
        return value

    return clean(event)
