"""Small valid files made on the fly (nothing large is checked in), and a
multipart encoder that sends file names exactly as given (Django's test client
strips directories from them, which would hide the very names under test)."""

from __future__ import annotations

import struct
import uuid
import zlib


def png_bytes(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf_bytes(text: str = "Hello PDF") -> bytes:
    """A one-page PDF showing ``text`` (ASCII), with a correct cross-reference table."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload) + 8) + kind + payload


# Heads that identify each accepted binary type, padded to look like a file.
SAMPLES: dict[str, tuple[str, bytes, str]] = {
    # expected type: (file name, content, declared type)
    "image/png": ("a.png", png_bytes(), "image/png"),
    "image/jpeg": ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 200, "image/jpeg"),
    "image/gif": ("a.gif", b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 200, "image/gif"),
    "image/webp": ("a.webp", b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 200, "image/webp"),
    "application/pdf": ("a.pdf", pdf_bytes(), "application/pdf"),
    "audio/mpeg": ("a.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 200, "audio/mpeg"),
    "audio/wav": ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 200, "audio/wav"),
    "audio/ogg": ("a.ogg", b"OggS\x00\x02" + b"\x00" * 200, "audio/ogg"),
    "audio/flac": ("a.flac", b"fLaC\x00\x00\x00\x22" + b"\x00" * 200, "audio/flac"),
    "audio/mp4": ("a.m4a", _box(b"ftyp", b"M4A \x00\x00\x02\x00isom") + b"\x00" * 200, "audio/mp4"),
    "video/mp4": ("a.mp4", _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + b"\x00" * 200, "video/mp4"),
    "video/quicktime": (
        "a.mov",
        _box(b"ftyp", b"qt  \x00\x00\x02\x00qt  ") + b"\x00" * 200,
        "video/quicktime",
    ),
    "video/webm": (
        "a.webm",
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
        b"\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02" + b"\x00" * 200,
        "video/webm",
    ),
}


def multipart(
    fields: dict[str, str] | None = None, files: list[tuple[str, str, bytes, str]] = ()
) -> tuple[bytes, str]:
    """Encode form fields and (field, file name, content, content type) files."""
    boundary = f"----claudesvc{uuid.uuid4().hex}"
    body = bytearray()
    for name, value in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value.encode() + b"\r\n"
    for field, file_name, content, content_type in files:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{file_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"
