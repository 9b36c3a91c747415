"""Receiving attachments with ``POST /jobs`` (multipart/form-data).

``AttachmentUploadHandler`` is a Django upload handler: as the multipart body
is parsed it writes each file chunk by chunk to a temporary file in
``FILE_UPLOAD_TEMP_DIR`` (never whole in memory), hashes it, decides its type
from its first bytes (``jobs.filetypes``), and refuses it the moment a rule is
broken: the 11th file, the byte past ``ATTACHMENT_MAX_BYTES`` (413), a type not
on the list (415), an empty file, a name with a path in it, a body that ends
inside a file. ``AttachmentMultiPartParser`` (a DRF parser) runs it and, when
anything goes wrong, removes every temporary file it made before the error
reaches the caller, so a rejected request leaves nothing behind.

A request the client abandons mid-body never gets this far: the ASGI handler
sees the disconnect while reading the body and drops the request.
"""

from __future__ import annotations

import hashlib
import html
import json
import unicodedata

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, DataAndFiles

from claudesvc.errors import ServiceError
from jobs.filetypes import FileSniffer, ImageTooLarge, UnsupportedFileType, human_size, image_pixels_check

# The seed's field is ``attachments[]``; ``attachments`` is what people type with curl -F.
ATTACHMENT_FIELDS = ("attachments[]", "attachments")
FIELD = ATTACHMENT_FIELDS[0]
# The audio of a transcription job (POST /jobs, type=transcription) arrives
# through the same streaming handler, with the same type and size checks.
TRANSCRIPTION_FIELD = "file"
MAX_NAME_BYTES = 255  # one path component on common filesystems


def attachment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an attachment's file name, or None if it can."""
    if name in ("", ".", ".."):
        return "is empty or a directory name"
    if "/" in name or "\\" in name:
        return "contains a path separator; send the bare file name"
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return "contains control characters"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


class ReceivedFile(TemporaryUploadedFile):
    """An uploaded file on disk, with what the handler learnt while receiving it."""

    sha256: str = ""
    declared_content_type: str = ""


class AttachmentUploadHandler(FileUploadHandler):
    # Larger than Django's 64 KiB: fewer Python round trips per 500 MB, still a bounded buffer.
    chunk_size = 1024 * 1024

    def __init__(self, request=None, *, fields: tuple[str, ...] = ATTACHMENT_FIELDS) -> None:
        super().__init__(request)
        self.fields = fields
        self.max_files = settings.ATTACHMENTS_MAX_FILES
        self.max_bytes = settings.ATTACHMENT_MAX_BYTES
        self.received: list[ReceivedFile] = []
        self.file: ReceivedFile | None = None

    def _error(self, message: str, *, status: int = 400, code: str = "invalid_request") -> ServiceError:
        field = getattr(self, "field_name", None) or FIELD
        return ServiceError(f"{field}: {message}", field=field, status=status, code=code)

    def _too_large(self) -> ServiceError:
        return self._error(
            f"{self.file_name} is larger than the limit of {human_size(self.max_bytes)} per file",
            status=413,
            code="file_too_large",
        )

    def new_file(
        self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None
    ):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if field_name not in self.fields:
            raise ServiceError(
                f"{field_name}: unexpected file field; send files as {FIELD}", field=field_name
            )
        if len(self.received) >= self.max_files:
            raise self._error(f"at most {self.max_files} files may be attached to a job")
        if any(f.name == file_name for f in self.received):
            raise self._error(f"two files are named {file_name}; file names must be unique")
        if content_length is not None and content_length > self.max_bytes:
            raise self._too_large()
        self.file = ReceivedFile(file_name, content_type, 0, charset, content_type_extra)
        self.file.declared_content_type = content_type or ""
        self.received.append(self.file)
        self._hash = hashlib.sha256()
        self._sniffer = FileSniffer(name=file_name, declared=content_type or "")

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > self.max_bytes:
            raise self._too_large()
        try:
            self._sniffer.feed(raw_data)
        except UnsupportedFileType as exc:
            raise self._unsupported(exc) from None
        self._hash.update(raw_data)
        self.file.write(raw_data)
        return None

    def _unsupported(self, exc: UnsupportedFileType) -> ServiceError:
        return self._error(
            f"{self.file_name} is not accepted: {exc}. Accepted: images (PNG, JPEG, WebP, GIF), PDF, "
            "UTF-8 text (plain, Markdown, CSV, HTML, JSON), audio (MP3, M4A, WAV, Ogg, FLAC, WebM) "
            "and video (MP4, WebM, QuickTime)",
            # Issue contracts: an attachment of a refused type is 415; a
            # transcription's audio that is not audio is a bad field, 400.
            status=400 if getattr(self, "field_name", None) == TRANSCRIPTION_FIELD else 415,
            code="unsupported_media_type",
        )

    def file_complete(self, file_size):
        if file_size == 0:
            raise self._error(f"{self.file_name} is empty")
        try:
            self.file.content_type = self._sniffer.finish()
        except UnsupportedFileType as exc:
            raise self._unsupported(exc) from None
        self.file.sha256 = self._hash.hexdigest()
        self.file.size = file_size
        self.file.flush()
        self.file.seek(0)
        if self.file.content_type.startswith("image/"):
            try:
                image_pixels_check(self.file, name=self.file_name)
            except ImageTooLarge as exc:
                raise self._error(str(exc), status=413, code="file_too_large") from None
        return self.file

    def upload_interrupted(self):
        raise self._error(f"the request body ended inside {self.file_name}; the upload was cut off")

    def discard(self) -> None:
        """Close (and so delete) every temporary file this handler made."""
        for received in self.received:
            received.close()


class _AttachmentParser(MultiPartParser):
    def sanitize_file_name(self, file_name):
        # Django would quietly strip directories and drop "..": refuse such names instead.
        problem = attachment_name_problem(html.unescape(file_name))
        if problem:
            raise ServiceError(f"{FIELD}: the file name {file_name!r} {problem}", field=FIELD)
        return super().sanitize_file_name(file_name)


class AttachmentMultiPartParser(BaseParser):
    """multipart/form-data with attachments streamed through ``AttachmentUploadHandler``."""

    media_type = "multipart/form-data"
    upload_fields = (*ATTACHMENT_FIELDS, TRANSCRIPTION_FIELD)

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context["request"]
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        handler = AttachmentUploadHandler(request._request, fields=self.upload_fields)
        try:
            data, files = _AttachmentParser(meta, stream, [handler], encoding).parse()
        except RequestDataTooBig:
            handler.discard()
            raise ServiceError(
                "The form fields besides the files are larger than allowed", status=413, code="too_large"
            ) from None
        except (MultiPartParserError, SuspiciousOperation) as exc:
            handler.discard()
            raise ParseError(f"Multipart form parse error - {exc}") from None
        except BaseException:
            handler.discard()
            raise
        return DataAndFiles(data, files)


def request_max_bytes() -> int:
    """The largest body ``POST /jobs`` could accept: every file at its limit, plus the form fields."""
    per_part_overhead = 16 * 1024  # boundary and part headers, generously
    return (
        settings.ATTACHMENTS_MAX_FILES * (settings.ATTACHMENT_MAX_BYTES + per_part_overhead)
        + (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
        + per_part_overhead
    )


class JobsRequestBodyGuard:
    """ASGI middleware in front of Django for ``/jobs…``: refuses, before reading
    a byte of it, a body that could never be accepted.

    Django's ASGI handler receives the whole body (spooled to disk) before any
    view or upload handler runs, so without this a client could fill the disk
    with one request. A ``Content-Length`` above ``request_max_bytes()`` is 413
    at once (curl, which waits for ``100 Continue`` on large bodies, then sends
    nothing). A body without ``Content-Length`` (chunked) is 411: Django parses
    such a body as empty, which would read as a missing prompt.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/jobs"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > request_max_bytes():
            return await _refuse(
                send,
                413,
                "too_large",
                f"The request body ({int(length)} bytes) is larger than POST /jobs accepts "
                f"({request_max_bytes()} bytes: {settings.ATTACHMENTS_MAX_FILES} files of at most "
                f"{settings.ATTACHMENT_MAX_BYTES} bytes)",
            )
        if length is None and b"transfer-encoding" in headers:
            return await _refuse(
                send,
                411,
                "length_required",
                "Send the body with a Content-Length (chunked bodies are not accepted)",
            )
        return await self.app(scope, receive, send)


async def _refuse(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
