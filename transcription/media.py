"""ffprobe and ffmpeg for the audio pipeline: probe, decode, find silences, cut.

Every run is an argument list (never a shell) with a time limit, and can be
stopped early by the job's watch (cancel, delete, timeout). Input from users is
read only through the ``file`` protocol and the demuxers of the accepted
formats, so a playlist or a file with external references cannot make ffmpeg
open anything else.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
from django.conf import settings

logger = logging.getLogger(__name__)

# Demuxers of the accepted formats: mp3, wav, m4a (mov), ogg, flac, webm (matroska).
AUDIO_DEMUXERS = ("mp3", "wav", "mov", "ogg", "flac", "matroska")
SAMPLE_RATE = 16_000
_INPUT_GUARD = ["-protocol_whitelist", "file", "-format_whitelist", ",".join(AUDIO_DEMUXERS)]
_SILENCE = re.compile(r"silence_(start|end): (-?[0-9.]+)")


class MediaError(Exception):
    """The audio cannot be used; the message is for the caller."""


class MediaStopped(Exception):
    """The job was stopped (cancel, delete, timeout) while ffmpeg ran."""


@dataclass(frozen=True)
class AudioProbe:
    demuxer: str
    codec: str
    # From the container's header; a browser-recorded webm has none.
    duration: float | None


def run_tool(
    args: list[str],
    *,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, str]:
    """Run ffmpeg/ffprobe; return (stdout, stderr). Kills it on timeout or when asked to stop."""
    limit = timeout if timeout is not None else settings.TRANSCRIPTION_FFMPEG_TIMEOUT_SECONDS
    deadline = time.monotonic() + limit
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            stop = should_stop is not None and should_stop()
            if stop or time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                if stop:
                    raise MediaStopped(args[0]) from None
                raise MediaError(
                    f"{Path(args[0]).name} took longer than {limit:.0f} s and was stopped "
                    "(TRANSCRIPTION_FFMPEG_TIMEOUT_SECONDS)"
                ) from None
    if proc.returncode != 0:
        raise MediaError(last_lines(err) or f"{Path(args[0]).name} exited with status {proc.returncode}")
    return out, err


_PATH = re.compile(r"(?:file:)?/[^\s:'\"]+")
_CONTEXT = re.compile(r"\[[^\]]*@ ?0x[0-9a-f]+\]\s*")


def last_lines(text: str, n: int = 3) -> str:
    """ffmpeg's last words, summarised for the caller: server paths and
    internal context (``[mp3 @ 0x55…]``) removed; the full text goes to the log."""
    if text.strip():
        logger.info("ffmpeg said: %s", text.strip()[-2000:])
    lines = []
    for line in text.strip().splitlines():
        line = _PATH.sub("<file>", _CONTEXT.sub("", line)).strip()
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines[-n:])[:300]


def probe_audio(path: Path, *, timeout: float | None = None, should_stop=None) -> AudioProbe:
    """What the file holds, read from its content (never its name).

    Raises MediaError unless it is one of the accepted containers with an audio
    stream. (``ffmpeg.probe`` has no time limit, hence the argument list here.)
    """
    args = [
        "ffprobe",
        "-v",
        "error",
        *_INPUT_GUARD,
        "-show_entries",
        "format=format_name,duration:stream=codec_type,codec_name,duration",
        "-of",
        "json",
        f"file:{path}",
    ]
    try:
        out, _ = run_tool(args, timeout=timeout, should_stop=should_stop)
        info = json.loads(out or "{}")
    except MediaError as exc:
        raise MediaError(f"not a supported audio file (mp3, wav, m4a, ogg, flac, webm): {exc}") from None
    except json.JSONDecodeError:
        raise MediaError("not a supported audio file: ffprobe gave no readable answer") from None
    audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    fmt = info.get("format") or {}
    demuxer = str(fmt.get("format_name", "")).split(",")[0]
    if demuxer not in AUDIO_DEMUXERS or not audio:
        raise MediaError(
            "not a supported audio file (mp3, wav, m4a, ogg, flac, webm): it has no audio stream"
        )
    return AudioProbe(
        demuxer=demuxer,
        codec=audio[0].get("codec_name", ""),
        duration=_seconds(fmt.get("duration")) or _seconds(audio[0].get("duration")),
    )


def _seconds(value) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def duration_problem(seconds: float | None) -> str | None:
    """Why audio this long is refused (``TRANSCRIPTION_MAX_DURATION_SECONDS``), or None."""
    limit = settings.TRANSCRIPTION_MAX_DURATION_SECONDS
    if seconds is None or seconds <= limit:
        return None
    return (
        f"the audio is {_hms(seconds)} long, more than the limit of {_hms(limit)} "
        "(TRANSCRIPTION_MAX_DURATION_SECONDS)"
    )


def _hms(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def normalise(src: Path, dst: Path, *, demuxer: str, should_stop=None) -> tuple[float, str]:
    """Decode the first audio stream to 16 kHz mono 16-bit WAV.

    Returns the decoded duration (exact: counted in samples, so it is known even
    when the container's header had none) and ffmpeg's error output, which is
    empty for a clean file. Decoding stops one second past
    ``TRANSCRIPTION_MAX_DURATION_SECONDS``, whatever the header claimed, so a
    small file cannot expand into hours of audio on the worker's disk; the
    caller refuses a result longer than the limit (``duration_problem``).
    """
    cap = settings.TRANSCRIPTION_MAX_DURATION_SECONDS + 1
    args = (
        ffmpeg.input(f"file:{src}", f=demuxer, protocol_whitelist="file")
        .output(str(dst), map="0:a:0", vn=None, ac=1, ar=SAMPLE_RATE, acodec="pcm_s16le", f="wav", t=cap)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-v", "error")
        .overwrite_output()
        .compile()
    )
    _, err = run_tool(args, should_stop=should_stop)
    return wav_duration(dst), err


def wav_duration(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (OSError, wave.Error, EOFError):
        return 0.0


def detect_silences(
    wav: Path, *, noise_db: int, min_seconds: float, should_stop=None
) -> list[tuple[float, float]]:
    """(start, end) of every stretch quieter than ``noise_db`` for at least ``min_seconds``."""
    args = (
        ffmpeg.input(str(wav))
        .filter("silencedetect", noise=f"{noise_db}dB", d=f"{min_seconds:.3f}")
        .output("-", f="null")
        .global_args("-nostdin", "-hide_banner", "-nostats", "-v", "info")
        .compile()
    )
    _, err = run_tool(args, should_stop=should_stop)
    silences: list[tuple[float, float]] = []
    start: float | None = None
    for kind, value in _SILENCE.findall(err):
        if kind == "start":
            start = max(float(value), 0.0)
        elif start is not None:
            silences.append((start, float(value)))
            start = None
    if start is not None:  # silent to the very end
        silences.append((start, wav_duration(wav)))
    return silences


def cut(wav: Path, dst: Path, *, start: float, end: float, should_stop=None) -> None:
    """One chunk of the normalised audio, as FLAC (lossless, about half the size of WAV)."""
    args = (
        ffmpeg.input(str(wav), ss=f"{start:.3f}", t=f"{end - start:.3f}")
        .output(str(dst), acodec="flac", f="flac")
        .global_args("-nostdin", "-hide_banner", "-nostats", "-v", "error")
        .overwrite_output()
        .compile()
    )
    run_tool(args, should_stop=should_stop)
