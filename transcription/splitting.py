"""Where to cut long audio into chunks the provider accepts.

A cut in a pause loses nothing and splits no word, so each cut goes into the
silence closest to (and not past) the chunk limit, if one lies within the
search window before it; the cut sits in the middle of that silence. Without a
usable silence the cut is hard, at the limit, and the next chunk starts a
little earlier (``overlap``) so that the word under the cut is heard whole in
one of the two chunks; ``stitching`` removes what both chunks then contain.
"""

from __future__ import annotations

from dataclasses import dataclass

# A chunk shorter than this is not worth a request of its own.
_MIN_CHUNK_SECONDS = 1.0


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    start: float
    end: float
    # How many seconds at the start of this chunk the previous chunk also covers.
    overlap: float = 0.0

    @property
    def duration(self) -> float:
        return self.end - self.start


def plan_chunks(
    duration: float,
    silences: list[tuple[float, float]],
    *,
    max_seconds: float,
    search_seconds: float,
    overlap_seconds: float,
) -> list[ChunkPlan]:
    """Chunks that cover ``[0, duration]`` in order, none longer than ``max_seconds``."""
    if duration <= max_seconds:
        return [ChunkPlan(0, 0.0, duration)]
    if overlap_seconds * 4 > max_seconds:
        raise ValueError("the overlap must be well under the chunk length")
    pauses = sorted((s, e) for s, e in silences if e > s)
    chunks: list[ChunkPlan] = []
    start, overlap = 0.0, 0.0
    while duration - start > max_seconds:
        limit = start + max_seconds
        cut = _cut_in_silence(
            pauses, lower=max(limit - search_seconds, start + _MIN_CHUNK_SECONDS), upper=limit
        )
        if cut is not None:
            chunks.append(ChunkPlan(len(chunks), start, cut, overlap))
            start, overlap = cut, 0.0
        else:
            chunks.append(ChunkPlan(len(chunks), start, limit, overlap))
            start, overlap = limit - overlap_seconds, overlap_seconds
    chunks.append(ChunkPlan(len(chunks), start, duration, overlap))
    return chunks


def _cut_in_silence(pauses: list[tuple[float, float]], *, lower: float, upper: float) -> float | None:
    """The middle of the latest silence whose middle lies in ``[lower, upper]``.

    A silence that reaches past ``upper`` still counts: the cut then goes at
    the middle of its part before ``upper``.
    """
    best = None
    for start, end in pauses:
        middle = (max(start, lower) + min(end, upper)) / 2
        if start <= upper and end >= lower and lower <= middle <= upper:
            best = middle if best is None else max(best, middle)
    return best
