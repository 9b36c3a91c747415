"""A fake Voxtral (OpenAI-style) transcription API on 127.0.0.1, and the test
audio it understands.

Test audio is "tone speech": each word of a small vocabulary is a sine tone
of its own pitch (``synthesize``), words are separated by short gaps and
sentences by pauses. The fake really listens: it decodes the uploaded chunk
with ffmpeg, finds the tones and names them by pitch (``recognise``), so what
it returns depends on exactly which audio the service sent, like a real
provider. A word cut at a chunk boundary is heard in both chunks, a pause is a
real silence for ffmpeg's silencedetect, and a test knows the transcript to
expect from the script it synthesized.

It answers ``POST /v1/audio/transcriptions`` (multipart) with
``{"text", "language", "duration", "segments": [{"id","start","end","text"}]}``,
records every request, and can be told to fail (``fail``), to answer slowly
(``delay``), without segments (``with_segments``) or with words the audio
does not hold (``extra_text``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

VOCABULARY = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
]  # fmt: skip
BASE_HZ = 350.0
STEP_HZ = 45.0
RATE = 16_000
WORD_SECONDS = 0.38
GAP_SECONDS = 0.12
PAUSE_SECONDS = 1.2
_FRAME = RATE // 100  # 10 ms
_SEGMENT_PAUSE = 0.6
_SEGMENT_MAX_WORDS = 12


def pitch(word: str) -> float:
    return BASE_HZ + STEP_HZ * VOCABULARY.index(word)


@dataclass(frozen=True)
class Spoken:
    start: float
    end: float
    word: str


def random_script(seed: int, words: int, *, sentence: tuple[int, int] = (5, 12)) -> list[list[str]]:
    """Sentences of random vocabulary words; no word follows itself."""
    rng = random.Random(seed)
    out: list[list[str]] = []
    last = None
    total = 0
    while total < words:
        length = min(rng.randint(*sentence), words - total)
        current = []
        for _ in range(length):
            word = rng.choice([w for w in VOCABULARY if w != last])
            current.append(word)
            last = word
        out.append(current)
        total += length
    return out


def synthesize(
    script: list[list[str]],
    *,
    pause: float = PAUSE_SECONDS,
    gap: float = GAP_SECONDS,
    lead: float = 0.5,
    noise_db: float | None = -60,
    seed: int = 0,
) -> tuple[np.ndarray, list[Spoken]]:
    """16 kHz mono int16 samples for the script, and when each word is spoken."""
    timeline: list[Spoken] = []
    at = lead
    for sentence in script:
        for k, word in enumerate(sentence):
            timeline.append(Spoken(at, at + WORD_SECONDS, word))
            at += WORD_SECONDS + (gap if k < len(sentence) - 1 else 0)
        at += pause
    samples = np.zeros(int(at * RATE) + RATE // 2, dtype=np.float32)
    n = int(WORD_SECONDS * RATE)
    t = np.arange(n, dtype=np.float32) / RATE
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * RATE)).astype(np.float32)
    for spoken in timeline:
        begin = int(spoken.start * RATE)
        samples[begin : begin + n] = 0.5 * np.sin(2 * np.pi * pitch(spoken.word) * t) * fade
    if noise_db is not None:
        amplitude = 10 ** (noise_db / 20)
        samples += np.random.default_rng(seed).uniform(-amplitude, amplitude, len(samples)).astype(np.float32)
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16), timeline


def encode(samples: np.ndarray, path: Path, *, args: list[str] | None = None, pipe: bool = False) -> Path:
    """Encode samples with ffmpeg (format from the suffix unless ``args`` say more).

    ``pipe=True`` writes through a pipe, as a browser's MediaRecorder does: the
    container then has no duration in its header.
    """
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-f",
        "s16le",
        "-ar",
        str(RATE),
        "-ac",
        "1",
        "-i",
        "pipe:0",
        *(args or []),
    ]
    if pipe:
        fmt = {".webm": "webm", ".ogg": "ogg", ".mp3": "mp3"}[path.suffix]
        out = subprocess.run(
            [*cmd, "-f", fmt, "pipe:1"], input=samples.tobytes(), capture_output=True, check=True
        )
        path.write_bytes(out.stdout)
    else:
        subprocess.run([*cmd, "-y", str(path)], input=samples.tobytes(), capture_output=True, check=True)
    return path


def tone_audio(path: Path, script: list[list[str]], *, args=None, pipe=False, **kwargs) -> list[Spoken]:
    samples, timeline = synthesize(script, **kwargs)
    encode(samples, path, args=args, pipe=pipe)
    return timeline


def decode(data: bytes) -> np.ndarray:
    # Through a file: some containers (m4a) cannot be read from a pipe.
    with tempfile.NamedTemporaryFile(prefix="fake-voxtral-") as tmp:
        tmp.write(data)
        tmp.flush()
        out = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", tmp.name, "-f", "s16le", "-ac", "1", "-ar", str(RATE), "pipe:1"],
            capture_output=True,
            check=True,
            timeout=120,
        )
    return np.frombuffer(out.stdout, dtype=np.int16)


def recognise(samples: np.ndarray) -> list[Spoken]:
    """The tone words in the audio: runs of sound, named by their pitch."""
    x = samples.astype(np.float32) / 32768
    frames = len(x) // _FRAME
    if frames == 0:
        return []
    rms = np.sqrt(np.mean(x[: frames * _FRAME].reshape(frames, _FRAME) ** 2, axis=1))
    voiced = rms > 0.05
    words: list[Spoken] = []
    k = 0
    while k < frames:
        if not voiced[k]:
            k += 1
            continue
        start = k
        while k < frames and voiced[k]:
            k += 1
        if k - start >= 8:  # at least 80 ms of tone
            piece = x[start * _FRAME : k * _FRAME]
            spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
            hz = float(np.argmax(spectrum)) * RATE / len(piece)
            index = round((hz - BASE_HZ) / STEP_HZ)
            word = VOCABULARY[index] if 0 <= index < len(VOCABULARY) else "unclear"
            words.append(Spoken(start / 100, k / 100, word))
    return words


def segments_of(words: list[Spoken]) -> list[dict[str, Any]]:
    """Words grouped into sentence-like segments, as a provider would return them."""
    groups: list[list[Spoken]] = []
    for word in words:
        if (
            not groups
            or word.start - groups[-1][-1].end >= _SEGMENT_PAUSE
            or len(groups[-1]) >= _SEGMENT_MAX_WORDS
        ):
            groups.append([])
        groups[-1].append(word)
    segments = []
    for i, group in enumerate(groups):
        text = " ".join(w.word for w in group)
        segments.append(
            {
                "id": i,
                "start": round(group[0].start, 2),
                "end": round(group[-1].end, 2),
                "text": text[:1].upper() + text[1:] + ".",
            }
        )
    return segments


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    fields: dict[str, str]
    filename: str
    audio_bytes: int
    duration: float
    status: int = 0
    received: float = 0.0
    words: list[str] = field(default_factory=list)


class FakeVoxtral:
    """Serves the fake API in a background thread; use as a context manager."""

    def __init__(self, *, api_key: str = "test-mistral-key") -> None:
        self.api_key = api_key
        self.requests: list[Recorded] = []
        # GET requests: nothing should ever fetch from here (see the playlist tests).
        self.gets: list[str] = []
        self.with_segments = True
        self.delay: Callable[[Recorded], float] | None = None
        # Said at the end of every chunk, as if spoken (e.g. directives for the fake Anthropic API).
        self.extra_text = ""
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.gets.append(self.path)
                self._json(404, {"message": "not found"})

            def _json(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeVoxtral:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.gets.clear()
            self._failures.clear()
            self.with_segments = True
            self.delay = None
            self.extra_text = ""
            self.max_in_flight = 0

    def fail(self, status: int, times: int = 1, *, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` (and a Retry-After header)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * times)

    def transcribed(self) -> list[Recorded]:
        return [r for r in self.requests if r.status == 200]

    # -- answering ---------------------------------------------------------

    def _handle(self, handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        if handler.path != "/v1/audio/transcriptions":
            handler._json(404, {"message": f"no route {handler.path}"})
            return
        fields, filename, audio = _multipart(handler.headers.get("content-type", ""), body)
        record = Recorded(
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            fields=fields,
            filename=filename,
            audio_bytes=len(audio),
            duration=0.0,
            received=time.monotonic(),
        )
        with self._lock:
            self.requests.append(record)
            failure = self._failures.pop(0) if self._failures else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if handler.headers.get("authorization") != f"Bearer {self.api_key}":
                record.status = 401
                handler._json(401, {"message": "Unauthorized", "request_id": "fake"})
                return
            if failure:
                status, retry_after = failure
                record.status = status
                headers = {"retry-after": retry_after} if retry_after is not None else {}
                handler._json(status, {"object": "error", "message": f"fake voxtral {status}"}, headers)
                return
            if not audio or "model" not in fields:
                record.status = 400
                handler._json(400, {"message": "file and model are required"})
                return
            samples = decode(audio)
            record.duration = len(samples) / RATE
            words = recognise(samples)
            record.words = [w.word for w in words]
            if self.delay:
                time.sleep(self.delay(record))
            segments = segments_of(words)
            if self.extra_text and segments:
                segments[-1]["text"] += " " + self.extra_text
            answer: dict[str, Any] = {
                "model": fields["model"],
                "text": " ".join(s["text"] for s in segments),
                "language": fields.get("language") or "en",
                "duration": round(record.duration, 3),
            }
            if self.with_segments:
                answer["segments"] = segments
            record.status = 200
            handler._json(200, answer)
        finally:
            with self._lock:
                self.in_flight -= 1


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that hangs up (a job stopped mid-request) is not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], str, bytes]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    filename, audio = "", b""
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            filename, audio = part.get_filename(), payload
        elif name:
            fields[name] = payload.decode()
    return fields, filename, audio
