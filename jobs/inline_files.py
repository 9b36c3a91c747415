"""Images and documents a compat request sends inline (base64), handed to the CLI as files.

The web process decodes and checks them (valid base64, allowed type, size)
and keeps them in the job's options; the worker writes them into the CLI's
working directory just before the job starts, and drops the bytes from the
options. That works when web and worker run on different hosts. (Uploaded
attachments of the Jobs API have their own model and storage; inline files of
the compat API could move onto it.)
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from claudesvc.errors import ServiceError
from jobs.filetypes import ImageTooLarge, image_pixels_check

# What Claude Code's Read tool can show the model, by media type.
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
}
_DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)$", re.DOTALL
)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class InlineFile:
    """One decoded file; ``name`` is its path relative to the CLI's working directory."""

    name: str
    media_type: str
    data: bytes

    def describe(self) -> str:
        return f"{self.name} ({self.media_type}, {len(self.data)} bytes)"

    def as_option(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "media_type": self.media_type,
            "data": base64.b64encode(self.data).decode(),
        }


class InlineFiles:
    """The files of one request, under ``attachments/<random>/`` of the working directory."""

    def __init__(self) -> None:
        self.folder = f"attachments/{secrets.token_hex(6)}"
        self.files: list[InlineFile] = []
        self.total = 0

    def _add(self, media_type: str, data: bytes, *, field: str, filename: str | None) -> InlineFile:
        if media_type not in EXTENSIONS:
            raise ServiceError(
                f"{field}: media type {media_type!r} is not supported; use one of {', '.join(EXTENSIONS)}",
                field=field,
            )
        if not data:
            raise ServiceError(f"{field}: the file is empty", field=field)
        self.total += len(data)
        if self.total > settings.COMPAT_MAX_INLINE_FILE_BYTES:
            raise ServiceError(
                f"{field}: inline files may add up to at most {settings.COMPAT_MAX_INLINE_FILE_BYTES} bytes",
                field=field,
                status=413,
                code="request_too_large",
            )
        if media_type.startswith("image/"):
            try:
                image_pixels_check(io.BytesIO(data), name="the image")
            except ImageTooLarge as exc:
                raise ServiceError(
                    f"{field}: {exc}", field=field, status=413, code="request_too_large"
                ) from None
        stem = _UNSAFE_NAME.sub("_", Path(filename or "").stem).strip("._")[:60] or "file"
        name = f"{self.folder}/{len(self.files) + 1:02d}-{stem}{EXTENSIONS[media_type]}"
        item = InlineFile(name=name, media_type=media_type, data=data)
        self.files.append(item)
        return item

    def add_base64(
        self, media_type: str, data: Any, *, field: str, filename: str | None = None
    ) -> InlineFile:
        if not isinstance(data, str) or not data:
            raise ServiceError(f"{field}: must be a non-empty base64 string", field=field)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ServiceError(f"{field}: is not valid base64", field=field) from None
        return self._add(media_type, raw, field=field, filename=filename)

    def add_text(self, media_type: str, text: Any, *, field: str, filename: str | None = None) -> InlineFile:
        if not isinstance(text, str):
            raise ServiceError(f"{field}: must be a string", field=field)
        return self._add(media_type, text.encode(), field=field, filename=filename)

    def add_data_url(self, url: Any, *, field: str, filename: str | None = None) -> InlineFile:
        if not isinstance(url, str):
            raise ServiceError(f"{field}: must be a string", field=field)
        match = _DATA_URL.match(url)
        if match is None:
            raise ServiceError(
                f"{field}: only base64 data: URLs are accepted (data:<type>;base64,…); "
                "the service does not fetch files from the internet",
                field=field,
            )
        return self.add_base64(match["type"], match["data"], field=field, filename=filename)


def inline_files_write(options: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Write the files kept in ``options`` under ``cwd``; the options without their bytes."""
    entries = options.get("inline_files") or []
    if not entries:
        return options
    root = cwd.resolve()
    for entry in entries:
        target = (root / entry["name"]).resolve()
        if not target.is_relative_to(root):  # names are made by InlineFiles; never trust them blindly
            raise ValueError(f"inline file {entry['name']!r} escapes the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if "data" in entry:
            target.write_bytes(base64.b64decode(entry["data"]))
    kept = [{k: v for k, v in entry.items() if k != "data"} for entry in entries]
    return {**options, "inline_files": kept}
