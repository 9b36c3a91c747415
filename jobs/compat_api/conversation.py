"""From an OpenAI or Anthropic ``messages`` list to what a job sends the CLI.

The CLI takes one prompt per run. A conversation is therefore split into:

- the system text (OpenAI ``system``/``developer`` messages, Anthropic
  ``system``), which becomes the job's system prompt;
- the new turn: the messages after the last ``assistant`` one; this is all a
  session that already has a Claude Code conversation sends (the CLI resumes
  the rest);
- the history before it, which a call without such a conversation sends as
  context in the prompt.

Content may be text or blocks; images and documents (base64 only, never
fetched) become files in the CLI's working directory that the prompt names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from claudesvc.errors import ServiceError
from jobs.inline_files import InlineFile, InlineFiles


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    files: list[InlineFile] = field(default_factory=list)

    def rendered(self) -> str:
        if not self.files:
            return self.text
        listing = "\n".join(f"- {f.describe()}" for f in self.files)
        note = f"Attached files (in your working directory; read them with the Read tool):\n{listing}"
        return f"{self.text}\n\n{note}" if self.text else note


@dataclass
class Conversation:
    system: str
    history: list[Turn]
    new_turn: list[Turn]

    def turn_prompt(self) -> str:
        """The new turn alone (a resumed conversation has the rest)."""
        return "\n\n".join(turn.rendered() for turn in self.new_turn)

    def full_prompt(self) -> str:
        """The new turn, with the earlier messages as context if there are any."""
        if not self.history:
            return self.turn_prompt()
        earlier = "\n".join(
            f'<message role="{turn.role}">\n{turn.rendered()}\n</message>' for turn in self.history
        )
        return (
            "The conversation so far (earlier messages, oldest first):\n"
            f"<conversation>\n{earlier}\n</conversation>\n\n"
            "Answer the user's latest message, which follows.\n\n"
            f"{self.turn_prompt()}"
        )

    def files(self, *, with_history: bool) -> list[InlineFile]:
        turns = [*self.history, *self.new_turn] if with_history else self.new_turn
        return [f for turn in turns for f in turn.files]


def _split(turns: list[Turn], field_name: str, count: int) -> tuple[list[Turn], list[Turn]]:
    if not turns:
        raise ServiceError(
            f"{field_name} must contain at least one user message", field=field_name, code="missing_messages"
        )
    if turns[-1].role != "user":
        # Prefill (answer continuing an assistant message) needs the raw Messages API;
        # the CLI only ever answers a user turn. Refused, never silently reordered.
        raise ServiceError(
            f"{field_name}[{count - 1}].role: the last message must be from the user; assistant prefill "
            "(a final assistant message for the answer to continue) is not supported, because Claude Code "
            "can only answer a user turn",
            field=f"{field_name}[{count - 1}].role",
            code="prefill_not_supported",
        )
    last_assistant = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=-1)
    return turns[: last_assistant + 1], turns[last_assistant + 1 :]


def _check_size(conversation: Conversation, field_name: str) -> Conversation:
    if len(conversation.full_prompt()) + len(conversation.system) > settings.MAX_PROMPT_CHARS:
        raise ServiceError(
            f"{field_name}: the conversation is longer than {settings.MAX_PROMPT_CHARS} characters",
            field=field_name,
            status=413,
            code="request_too_large",
        )
    return conversation


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ServiceError(f"{where}: must be a string", field=where)
    return value


def _require_text(turn: Turn, where: str) -> Turn:
    if not turn.text.strip() and not turn.files:
        raise ServiceError(f"{where}: must not be empty", field=where)
    return turn


# -- OpenAI -----------------------------------------------------------------------------------


def _openai_content(content: Any, where: str, files: InlineFiles, *, blocks_too: bool) -> tuple[str, list]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ServiceError(f"{where}: must be a string or a list of content parts", field=where)
    texts, attached = [], []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise ServiceError(f"{at}: must be an object", field=at)
        kind = part.get("type")
        if kind == "text":
            texts.append(_text(part.get("text"), f"{at}.text"))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            attached.append(files.add_data_url(url, field=f"{at}.image_url.url", filename="image"))
        elif kind == "file":
            spec = part.get("file")
            if not isinstance(spec, dict) or "file_data" not in spec:
                raise ServiceError(
                    f"{at}.file.file_data: required (a base64 data: URL; uploaded file ids are not supported)",
                    field=f"{at}.file.file_data",
                )
            attached.append(
                files.add_data_url(
                    spec["file_data"], field=f"{at}.file.file_data", filename=spec.get("filename")
                )
            )
        elif blocks_too and kind in ("image", "document"):
            attached.append(_anthropic_source(part, at, files))
        else:
            allowed = "text, image_url, file" + (", image, document" if blocks_too else "")
            raise ServiceError(f"{at}.type: {kind!r} is not supported (use {allowed})", field=f"{at}.type")
    return "\n".join(texts), attached


def openai_conversation(messages: list[dict[str, Any]], *, input_format: str = "text") -> Conversation:
    """``messages`` already checked by the serializer (roles, content present)."""
    files = InlineFiles()
    system, turns = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}].content"
        text, attached = _openai_content(
            message["content"], where, files, blocks_too=input_format == "stream-json"
        )
        if message["role"] in ("system", "developer"):
            if attached:
                raise ServiceError(f"{where}: system messages take text only", field=where)
            system.append(text)
        else:
            turns.append(_require_text(Turn(message["role"], text, attached), where))
    history, new_turn = _split(turns, "messages", len(messages))
    return _check_size(Conversation("\n\n".join(s for s in system if s), history, new_turn), "messages")


# -- Anthropic --------------------------------------------------------------------------------


def _anthropic_source(block: dict[str, Any], at: str, files: InlineFiles) -> InlineFile:
    source = block.get("source")
    if not isinstance(source, dict):
        raise ServiceError(f"{at}.source: required (an object)", field=f"{at}.source")
    kind = source.get("type")
    title = block.get("title") if isinstance(block.get("title"), str) else block.get("type")
    if kind == "base64":
        media_type = _text(source.get("media_type"), f"{at}.source.media_type")
        return files.add_base64(media_type, source.get("data"), field=f"{at}.source.data", filename=title)
    if kind == "text" and block.get("type") == "document":
        return files.add_text("text/plain", source.get("data"), field=f"{at}.source.data", filename=title)
    raise ServiceError(
        f"{at}.source.type: {kind!r} is not supported (use base64; the service does not fetch URLs)",
        field=f"{at}.source.type",
    )


def _anthropic_content(content: Any, where: str, files: InlineFiles) -> tuple[str, list]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ServiceError(f"{where}: must be a string or a list of content blocks", field=where)
    texts, attached = [], []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise ServiceError(f"{at}: must be an object", field=at)
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block.get("text"), f"{at}.text"))
        elif kind in ("image", "document"):
            attached.append(_anthropic_source(block, at, files))
        else:
            raise ServiceError(
                f"{at}.type: {kind!r} is not supported (use text, image, document)", field=f"{at}.type"
            )
    return "\n".join(texts), attached


def anthropic_system(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise ServiceError("system: must be a string or a list of text blocks", field="system")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise ServiceError(f"system[{i}]: must be a text block", field=f"system[{i}]")
        texts.append(_text(block.get("text"), f"system[{i}].text"))
    return "\n\n".join(texts)


def anthropic_conversation(messages: list[dict[str, Any]], system: Any = None) -> Conversation:
    files = InlineFiles()
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}].content"
        text, attached = _anthropic_content(message["content"], where, files)
        turns.append(_require_text(Turn(message["role"], text, attached), where))
    history, new_turn = _split(turns, "messages", len(messages))
    return _check_size(Conversation(anthropic_system(system), history, new_turn), "messages")
