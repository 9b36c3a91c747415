"""Streaming a job's file to the caller with the headers ``curl -O -J`` and browsers need."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, StreamingHttpResponse

from jobs.models import Artifact

_CHUNK = 512 * 1024


def content_disposition(name: str) -> str:
    """``attachment`` with the file's base name, per RFC 6266.

    ``filename*`` (RFC 5987, UTF-8, percent-encoded) carries the exact name;
    ``filename`` an ASCII stand-in for clients that ignore ``filename*`` (curl's
    ``-J`` is one of them).
    """
    base = name.rsplit("/", 1)[-1]
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    ascii_name = "".join(ch if ch.isprintable() and ch not in '"\\' else "_" for ch in ascii_name).strip()
    if not ascii_name or (ascii_name.startswith(".") and not base.startswith(".")):
        ascii_name = f"download{ascii_name}"  # "日本語.pdf" -> "download.pdf"
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != base:
        header += f"; filename*=UTF-8''{quote(base, safe='')}"
    return header


async def _chunks(artifact: Artifact):
    handle = await sync_to_async(artifact.file.open, thread_sensitive=False)("rb")
    try:
        while chunk := await sync_to_async(handle.read, thread_sensitive=False)(_CHUNK):
            yield chunk
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()


def artifact_response(request, artifact: Artifact) -> StreamingHttpResponse:
    if isinstance(request, ASGIRequest):
        # Under ASGI Django reads a synchronous iterator (FileResponse's) whole
        # into memory before sending it; an async one streams chunk by chunk.
        response = StreamingHttpResponse(_chunks(artifact), content_type=artifact.content_type)
    else:
        response = FileResponse(artifact.file.open("rb"), content_type=artifact.content_type)
    response["Content-Length"] = str(artifact.size)
    response["Content-Disposition"] = content_disposition(artifact.name)
    # What the job wrote is the job's, not ours: never let a browser run it on this origin.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response
