"""Claude Code conversations in the database: claude-agent-sdk's ``SessionStore`` on the ORM.

The CLI keeps a conversation in a JSONL file under its config directory, on the
host that ran it. With ``ClaudeAgentOptions(session_store=...)`` the SDK hands
every line it writes to ``append()`` as well (flushed before each ``result``
reaches the runner), and a resume calls ``load()`` and rebuilds the file in a
temporary config directory before the CLI starts. With this store behind it,
any worker host can run a session's next turn; the local files are a cache.

A store is opened for one owner, a compat session (``ClaudeSession``) or a
job, and sees only that owner's lines (``TranscriptEntry`` rows, deleted with
their owner): a job can resume its own session's conversation and nothing else,
whatever id it asks for.

Two choices go beyond the SDK's contract:

- ``workdir``: the SDK names a project after the CLI's working directory, a
  path under the host's ``JOBS_ROOT``, which differs between hosts. The
  project of the directory a store is opened for is saved under the portable
  name ``WORKDIR_PROJECT``, so another host with another ``JOBS_ROOT`` finds it.
- ``writer``: the job that appends. A session's store skips lines written by
  turns that did not complete, so a turn that failed, was cancelled or whose
  host died mid-way leaves nothing behind and the next turn resumes from the
  last completed one.

PostgreSQL's ``jsonb`` cannot hold the NUL character or a lone surrogate; a line containing one
(a tool read a binary file) is kept as its JSON text inside a wrapper object
and unwrapped on load, so every line round-trips exactly.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from claude_agent_sdk import SessionStore, project_key_for_directory
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
)
from django.db.models import Max, Q, QuerySet

from jobs.models import JobStatus, TranscriptEntry

# The project name lines of the store's own working directory are kept under.
WORKDIR_PROJECT = "workdir"
# A line jsonb cannot hold, as JSON text (see the module docstring).
_WRAPPED = "__claudesvc_json__"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_FIELD_LIMITS = {
    "project_key": TranscriptEntry._meta.get_field("project_key").max_length,
    "session_id": TranscriptEntry._meta.get_field("session_key").max_length,
    "subpath": TranscriptEntry._meta.get_field("subpath").max_length,
}
_UUID_LIMIT = TranscriptEntry._meta.get_field("uuid").max_length


def _stored(entry: SessionStoreEntry) -> Any:
    if not isinstance(entry, dict):
        raise ValueError(f"a transcript entry must be a JSON object, not {type(entry).__name__}")
    text = json.dumps(entry, ensure_ascii=False)
    if "\\u0000" in text or _LONE_SURROGATE.search(text) or _WRAPPED in entry:
        return {_WRAPPED: json.dumps(entry)}  # ASCII only: escapes instead of the characters
    return entry


def _loaded(data: Any) -> SessionStoreEntry:
    if isinstance(data, dict) and len(data) == 1 and _WRAPPED in data:
        return json.loads(data[_WRAPPED])
    return data


def _entry_uuid(entry: SessionStoreEntry) -> str:
    value = entry.get("uuid")
    if not isinstance(value, str) or not value:
        return ""  # titles, tags, mode markers: appended without dedup
    if len(value) > _UUID_LIMIT:
        raise ValueError(f"a transcript entry's uuid is longer than {_UUID_LIMIT} characters")
    return value


class DatabaseSessionStore(SessionStore):
    """The transcripts of one compat session (``session_id``) or one job (``job_id``)."""

    def __init__(
        self,
        *,
        session_id: uuid.UUID | None = None,
        job_id: uuid.UUID | None = None,
        writer_id: uuid.UUID | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        self.bind(session_id=session_id, job_id=job_id, writer_id=writer_id)
        self._local_project = project_key_for_directory(workdir) if workdir is not None else None

    def bind(
        self,
        *,
        session_id: uuid.UUID | None = None,
        job_id: uuid.UUID | None = None,
        writer_id: uuid.UUID | None,
    ) -> None:
        """Give a store opened before its owner was known (a spare CLI's, ``jobs.spares``)
        its owner and writer, as the constructor would have. Called before the CLI writes a line."""
        if (session_id is None) == (job_id is None):
            raise ValueError("a session store belongs to exactly one compat session or one job")
        self._owner = {"session_id": session_id} if session_id is not None else {"job_id": job_id}
        self._writer_id = writer_id

    def __repr__(self) -> str:
        owner, pk = next(iter(self._owner.items()))
        return f"<DatabaseSessionStore {owner}={pk}>"

    # Keys -----------------------------------------------------------------------------

    def _project(self, project_key: str) -> str:
        return WORKDIR_PROJECT if project_key == self._local_project else project_key

    def _key_fields(self, key: SessionKey | SessionListSubkeysKey) -> dict[str, str]:
        values = {
            "project_key": key["project_key"],
            "session_id": key["session_id"],
            "subpath": key.get("subpath") or "",
        }
        for name, value in values.items():
            if not isinstance(value, str) or len(value) > _FIELD_LIMITS[name]:
                raise ValueError(
                    f"session key {name} must be a string of at most {_FIELD_LIMITS[name]} characters"
                )
        if not values["project_key"] or not values["session_id"]:
            raise ValueError("session key project_key and session_id must not be empty")
        return {
            "project_key": self._project(values["project_key"]),
            "session_key": values["session_id"],
            "subpath": values["subpath"],
        }

    def _owned(self) -> QuerySet[TranscriptEntry]:
        return TranscriptEntry.objects.filter(**self._owner)

    def _visible(self) -> QuerySet[TranscriptEntry]:
        """What a resume may see: in a session, only lines of turns that completed (and this one's)."""
        lines = self._owned()
        if "session_id" in self._owner:
            seen = Q(writer__isnull=True) | Q(writer__status=JobStatus.COMPLETED)
            if self._writer_id is not None:
                seen |= Q(writer_id=self._writer_id)
            lines = lines.filter(seen)
        return lines

    # The SessionStore protocol ----------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        fields = self._key_fields(key)
        rows = [
            TranscriptEntry(
                **self._owner,
                **fields,
                writer_id=self._writer_id,
                data=_stored(entry),
                uuid=_entry_uuid(entry),
            )
            for entry in entries
        ]
        # A line already stored (same owner, key and uuid) is skipped: the SDK
        # retries a failed batch, and a timed-out one may still have landed.
        await TranscriptEntry.objects.abulk_create(rows, ignore_conflicts=True)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        lines = self._visible().filter(**self._key_fields(key)).order_by("id").values_list("data", flat=True)
        entries = [_loaded(data) async for data in lines]
        return entries or None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        rows = (
            self._visible()
            .filter(project_key=self._project(project_key), subpath="")
            .values("session_key")
            .annotate(mtime=Max("created_at"))
            .order_by()
        )
        return [
            {"session_id": row["session_key"], "mtime": int(row["mtime"].timestamp() * 1000)}
            async for row in rows
        ]

    async def delete(self, key: SessionKey) -> None:
        fields = self._key_fields(key)
        lines = self._owned().filter(project_key=fields["project_key"], session_key=fields["session_key"])
        if fields["subpath"]:
            lines = lines.filter(subpath=fields["subpath"])
        # Without a subpath: the main transcript and every subagent transcript under it.
        await lines.adelete()

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        fields = self._key_fields(key)
        subpaths = (
            self._visible()
            .filter(project_key=fields["project_key"], session_key=fields["session_key"])
            .exclude(subpath="")
            .values_list("subpath", flat=True)
            .order_by("subpath")
            .distinct()
        )
        return [subpath async for subpath in subpaths]
