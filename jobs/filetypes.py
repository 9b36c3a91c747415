"""What a file is, decided from its bytes rather than its name or a client's header.

Binary formats are recognised by their magic numbers with ``filetype``: pure
Python (no libmagic to install on every web host and in the image), it looks
only at the first 8 KiB, which lets an upload be judged while it is still
arriving. python-magic would add a native dependency for nothing we need: its
guesses for text (plain vs. CSV vs. Markdown) are no better than the rule below.

Text has no magic number. A file whose bytes are UTF-8 without NUL bytes is
text; its extension says which kind (``.md`` -> text/markdown, ``.csv`` ->
text/csv, ``.html`` -> text/html, ``.json`` -> application/json, which must also
start with ``{`` or ``[``); without a telling extension the client's declared
type is taken if it is a text type on the list, else text/plain. The whole file
must stay UTF-8, not only its head: ``FileSniffer`` checks every chunk.

Some containers hold sound or pictures alike (WebM, MP4): the bytes say which
container, the client's declared type or extension says audio or video.
"""

from __future__ import annotations

import codecs
import mimetypes
import warnings
from pathlib import PurePosixPath
from typing import BinaryIO

import filetype
from django.conf import settings
from PIL import Image, UnidentifiedImageError

# The seed's list of what POST /jobs accepts.
ACCEPTED_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
        "application/pdf",
        "text/plain",
        "text/markdown",
        "text/csv",
        "text/html",
        "application/json",
        "audio/mpeg",
        "audio/mp4",
        "audio/wav",
        "audio/ogg",
        "audio/flac",
        "audio/webm",
        "video/mp4",
        "video/webm",
        "video/quicktime",
    }
)
TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/csv", "text/html", "application/json"})
SNIFF_BYTES = 8192  # all that filetype reads

# filetype's names for what the seed calls otherwise.
_CANONICAL = {"audio/x-wav": "audio/wav", "audio/x-flac": "audio/flac", "video/x-m4v": "video/mp4"}
# Containers that carry either sound or pictures -> their audio name.
_AUDIO_VARIANT = {"video/webm": "audio/webm", "video/mp4": "audio/mp4"}
_AUDIO_EXTENSIONS = {".weba", ".m4a", ".mp4a", ".oga", ".opus"}
_TEXT_BY_EXTENSION = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
}


def human_size(size: float) -> str:
    """``2048`` -> ``2.0 KB``: sizes as the messages and prompts about files show them."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class UnsupportedFileType(Exception):
    """The file is not of a type on the list; the message says what it is, if known."""


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def _bare(declared: str) -> str:
    return (declared or "").split(";", 1)[0].strip().lower()


def _binary_type(mime: str, name: str, declared: str) -> str:
    mime = _CANONICAL.get(mime, mime)
    audio = _AUDIO_VARIANT.get(mime)
    if audio and (_bare(declared).startswith("audio/") or _suffix(name) in _AUDIO_EXTENSIONS):
        return audio
    return mime


def _text_type(name: str, declared: str) -> str:
    by_name = _TEXT_BY_EXTENSION.get(_suffix(name))
    if by_name:
        return by_name
    return _bare(declared) if _bare(declared) in TEXT_TYPES else "text/plain"


class FileSniffer:
    """Decides a file's type from the bytes fed to it, in order.

    ``strict`` (uploads): anything not on ``ACCEPTED_TYPES`` raises
    ``UnsupportedFileType``, as soon as the head shows it or, for text, as soon
    as a chunk is not UTF-8. Not strict (a job's output files): every file gets
    a type, falling back to its extension and then application/octet-stream,
    and text verified as UTF-8 says so with ``; charset=utf-8``.
    """

    def __init__(self, *, name: str, declared: str = "", strict: bool = True) -> None:
        self.name = name
        self.declared = declared
        self.strict = strict
        self.content_type: str | None = None
        self._head = bytearray()
        self._utf8: codecs.IncrementalDecoder | None = None
        self._text_broken = False

    def feed(self, chunk: bytes) -> None:
        if self.content_type is None:
            self._head += chunk
            if len(self._head) >= SNIFF_BYTES:
                self._decide(complete=False)
        elif self._utf8 is not None:
            self._check_text(chunk, final=False)

    def finish(self) -> str:
        if self.content_type is None:
            self._decide(complete=True)
        elif self._utf8 is not None:
            self._check_text(b"", final=True)
        assert self.content_type is not None
        if not self.strict and self._utf8 is not None:
            return f"{self.content_type}; charset=utf-8"
        return self.content_type

    def _decide(self, *, complete: bool) -> None:
        head = bytes(self._head)
        self._head = bytearray()
        kind = filetype.guess(head[:SNIFF_BYTES])
        if kind is not None:
            found = _binary_type(kind.mime, self.name, self.declared)
            if self.strict and found not in ACCEPTED_TYPES:
                raise UnsupportedFileType(f"its content is {found}, which is not an accepted type")
            self.content_type = found
            return
        if b"\x00" not in head:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self.content_type = _text_type(self.name, self.declared)
            self._check_text(head, final=complete)
            if self._utf8 is not None and self.content_type == "application/json":
                start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
                if start not in (b"{", b"["):
                    self._not_text("it is named .json but does not hold a JSON object or array")
            if self._utf8 is not None:
                return
        if self.strict:
            raise UnsupportedFileType(
                "its content is not of a recognised type (binary data of unknown format)"
            )
        self.content_type = self._by_name()

    def _check_text(self, chunk: bytes, *, final: bool) -> None:
        assert self._utf8 is not None
        try:
            text = self._utf8.decode(chunk, final=final)
        except UnicodeDecodeError:
            self._not_text("it looks like text but is not valid UTF-8")
            return
        if "\x00" in text:
            self._not_text("it looks like text but contains NUL bytes")

    def _not_text(self, reason: str) -> None:
        if self.strict:
            raise UnsupportedFileType(reason)
        self._utf8 = None
        self.content_type = self._by_name()

    def _by_name(self) -> str:
        guessed, _ = mimetypes.guess_type(self.name, strict=False)
        return guessed or "application/octet-stream"


class ImageTooLarge(Exception):
    """An image with more pixels than ``IMAGE_MAX_PIXELS``; the message says how many."""


def image_pixels_check(fh: BinaryIO, *, name: str) -> None:
    """Refuse an image whose width x height passes ``IMAGE_MAX_PIXELS``.

    Only the header is read (Pillow decodes nothing until asked), so a small
    file that would expand to gigabytes when opened (a 16000 x 16000 PNG of one
    colour is 250 KB) costs nothing here. An image Pillow cannot read is left
    alone: its type was already decided from its bytes.
    """
    limit = settings.IMAGE_MAX_PIXELS
    position = fh.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as image:
                width, height = image.size
                frames = getattr(image, "n_frames", 1) or 1
    except Image.DecompressionBombError:
        raise ImageTooLarge(
            f"{name} has more pixels than the limit of {limit:,} (IMAGE_MAX_PIXELS)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return
    finally:
        fh.seek(position)
    pixels = width * height * frames
    if pixels > limit:
        counted = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageTooLarge(
            f"{name} is {counted} = {pixels:,} pixels, more than the limit of {limit:,} (IMAGE_MAX_PIXELS)"
        )
