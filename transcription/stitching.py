"""Joining the chunks' transcripts into one, in order, on one time line.

Chunks cut in a silence simply follow each other. Chunks cut hard overlap by a
few seconds, so the words spoken in the overlap come back twice, and the words
under each cut may come back garbled. At such a seam the tail of the text so
far and the head of the next chunk are compared word by word (case and
punctuation ignored); the longest run both share, if it sits at the seam, is
kept once, and whatever lies beyond it on either side (the garbled edges) goes.
Without such a run the segments of the next chunk that lie entirely inside the
overlap are dropped, since the previous chunk already covered that audio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from transcription.splitting import ChunkPlan

# Words that may be garbled at either edge of a hard cut and still count as "at the seam".
_EDGE_SLACK = 2
# Below this many words in common a match could be chance ("the", "and").
_MIN_MATCH = 2
# A paragraph break in the plain text where the speaker paused this long.
PARAGRAPH_PAUSE = 2.0
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class ChunkTranscript:
    """The provider's answer for one chunk; segment times count from the chunk's start."""

    chunk: ChunkPlan
    text: str
    segments: list[Segment]
    language: str = ""


def stitch(parts: list[ChunkTranscript]) -> list[Segment]:
    """One list of segments, in time order, in seconds from the start of the audio."""
    result: list[Segment] = []
    for part in sorted(parts, key=lambda p: p.chunk.index):
        segments = absolute_segments(part)
        if result and part.chunk.overlap > 0:
            result, segments = _join_seam(
                result, segments, seam_start=part.chunk.start, seam_end=part.chunk.start + part.chunk.overlap
            )
        result.extend(segments)
    return _monotonic(result)


def absolute_segments(part: ChunkTranscript) -> list[Segment]:
    offset, length = part.chunk.start, part.chunk.duration
    segments = [
        Segment(
            start=offset + min(max(s.start, 0.0), length),
            end=offset + min(max(s.end, s.start, 0.0), length),
            text=_one_line(s.text),
        )
        for s in part.segments
        if s.text and s.text.strip()
    ]
    if not segments and part.text.strip():
        segments = estimated_segments(part.text, offset, offset + length)
    return segments


def estimated_segments(text: str, start: float, end: float) -> list[Segment]:
    """Sentences of a transcript that came without timestamps, timed by their share of the text."""
    sentences = [s for s in (_one_line(x) for x in _SENTENCE_END.split(text.strip())) if s]
    total = sum(len(s) for s in sentences) or 1
    segments, at = [], start
    for sentence in sentences:
        length = (end - start) * len(sentence) / total
        segments.append(Segment(at, at + length, sentence))
        at += length
    return segments


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _norm(word: str) -> str:
    return re.sub(r"\W+", "", word.casefold())


def _words(segments: list[Segment]) -> list[tuple[int, int, str]]:
    """(segment index, word index in it, word) for every word."""
    return [(i, j, w) for i, seg in enumerate(segments) for j, w in enumerate(seg.text.split())]


def _window(seconds: float) -> int:
    # Speech runs at about 2-3 words a second; allow for the garbled edges too.
    return max(8, int(seconds * 4) + 2 * _EDGE_SLACK)


def _join_seam(
    before: list[Segment], after: list[Segment], *, seam_start: float, seam_end: float
) -> tuple[list[Segment], list[Segment]]:
    window = _window(seam_end - seam_start)
    tail = _words(before)[-window:]
    head = _words(after)[:window]
    # Words that are only punctuation never match anything.
    a = [_norm(w) or f"\0a{k}" for k, (_, _, w) in enumerate(tail)]
    b = [_norm(w) or f"\0b{k}" for k, (_, _, w) in enumerate(head)]
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    at_seam = match.a + match.size >= len(a) - _EDGE_SLACK and match.b <= _EDGE_SLACK
    if match.size >= _MIN_MATCH and at_seam:
        keep_before = tail[match.a + match.size - 1]  # last word kept before the seam
        drop_after = head[match.b + match.size - 1]  # last word dropped after it
        before = _cut_after(before, keep_before[0], keep_before[1])
        after = _cut_before(after, drop_after[0], drop_after[1], seam_end)
        return before, after
    return before, [s for s in after if s.end > seam_end]


def _cut_after(segments: list[Segment], seg_index: int, word_index: int) -> list[Segment]:
    """Keep words up to and including (seg_index, word_index)."""
    kept = segments[:seg_index]
    words = segments[seg_index].text.split()[: word_index + 1]
    kept.append(replace(segments[seg_index], text=" ".join(words)))
    return kept


def _cut_before(segments: list[Segment], seg_index: int, word_index: int, seam_end: float) -> list[Segment]:
    """Drop words up to and including (seg_index, word_index)."""
    first = segments[seg_index]
    words = first.text.split()[word_index + 1 :]
    rest = segments[seg_index + 1 :]
    if not words:
        return rest
    # The dropped words were spoken inside the overlap; what is left starts after it.
    start = min(max(first.start, seam_end), first.end)
    return [replace(first, start=start, text=" ".join(words)), *rest]


def _monotonic(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for seg in segments:
        start = max(seg.start, out[-1].start if out else 0.0)
        out.append(Segment(start, max(seg.end, start), seg.text))
    return out


def plain_text(segments: list[Segment]) -> str:
    """The transcript as running text, a new paragraph where the speaker paused."""
    paragraphs: list[list[str]] = []
    last_end = None
    for seg in segments:
        if last_end is None or seg.start - last_end >= PARAGRAPH_PAUSE:
            paragraphs.append([])
        paragraphs[-1].append(_one_line(seg.text))
        last_end = seg.end
    return "\n\n".join(" ".join(p) for p in paragraphs)
