"""Stitching the chunks' transcripts: order, time offsets, and no doubled words at hard cuts."""

from __future__ import annotations

import itertools

import pytest

from transcription.splitting import ChunkPlan
from transcription.stitching import ChunkTranscript, Segment, estimated_segments, plain_text, stitch


def words(segments: list[Segment]) -> list[str]:
    return [w.strip(".,!?").lower() for s in segments for w in s.text.split()]


def part(index, start, end, segments, overlap=0.0, text=None):
    segs = [Segment(*s) for s in segments]
    return ChunkTranscript(
        ChunkPlan(index, start, end, overlap),
        text if text is not None else " ".join(s.text for s in segs),
        segs,
    )


def test_chunks_cut_in_silence_follow_each_other_on_one_time_line():
    parts = [
        part(1, 30.0, 55.0, [(0.5, 4.0, "Third sentence."), (5.0, 9.0, "Fourth one.")]),
        part(0, 0.0, 30.0, [(0.0, 3.0, "First sentence."), (10.0, 29.0, "Second one.")]),
        part(2, 55.0, 60.0, [(1.0, 2.0, "Last.")]),
    ]
    stitched = stitch(parts)
    assert [s.text for s in stitched] == [
        "First sentence.",
        "Second one.",
        "Third sentence.",
        "Fourth one.",
        "Last.",
    ]
    assert [(s.start, s.end) for s in stitched] == [(0, 3), (10, 29), (30.5, 34), (35, 39), (56, 57)]


def test_a_hard_cut_keeps_the_words_of_the_overlap_once_and_drops_the_garbled_edges():
    # Cut at 20 s, the next chunk starts at 18 s: "india juliett" was heard by both,
    # "kil" and "ltel" are the halves of words under the cuts.
    before = part(
        0,
        0.0,
        20.0,
        [(0.0, 9.0, "Alpha bravo charlie delta."), (10.0, 20.0, "Echo foxtrot golf hotel india juliett kil")],
    )
    after = part(
        1,
        18.0,
        38.0,
        [(0.0, 7.0, "ltel india, Juliett kilo lima."), (8.0, 12.0, "Mike november.")],
        overlap=2.0,
    )
    stitched = stitch([after, before])
    assert words(stitched) == (
        [
            "alpha",
            "bravo",
            "charlie",
            "delta",
            "echo",
            "foxtrot",
            "golf",
            "hotel",
            "india",
            "juliett",
            "kilo",
            "lima",
            "mike",
            "november",
        ]
    )
    # The trimmed first segment of the later chunk starts where the overlap ends.
    assert stitched[2].start == pytest.approx(20.0)
    assert stitched[2].text == "kilo lima."
    assert [s.start for s in stitched] == sorted(s.start for s in stitched)


def test_a_match_far_from_the_seam_is_not_taken_for_the_overlap():
    before = part(0, 0.0, 20.0, [(0.0, 20.0, "alpha bravo one two three four five six seven eight")])
    # "alpha bravo" appears again, but deep inside the next chunk: chance, not the overlap.
    after = part(
        1, 18.0, 38.0, [(0.0, 1.5, "eight"), (1.6, 20.0, "nine ten eleven alpha bravo twelve")], overlap=2.0
    )
    stitched = stitch([before, after])
    # Without a shared run at the seam, segments lying wholly inside the overlap are dropped.
    assert words(stitched) == [
        "alpha",
        "bravo",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "alpha",
        "bravo",
        "twelve",
    ]


def test_a_chunk_without_segments_is_timed_by_its_sentences():
    segments = estimated_segments("One two. Three four five six!  Seven?", 10.0, 20.0)
    assert [s.text for s in segments] == ["One two.", "Three four five six!", "Seven?"]
    assert segments[0].start == 10.0 and segments[-1].end == pytest.approx(20.0)
    assert all(a.end == pytest.approx(b.start) for a, b in itertools.pairwise(segments))


def test_chunks_without_segments_are_stitched_by_their_text():
    before = part(0, 0.0, 20.0, [], text="Alpha bravo charlie. Delta echo foxtrot golf")
    after = part(1, 18.0, 30.0, [], text="foxtrot golf hotel india.", overlap=2.0)
    assert words(stitch([before, after])) == [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
    ]


def test_the_plain_text_starts_a_paragraph_after_a_long_pause():
    segments = [Segment(0, 2, "One."), Segment(2.5, 4, "Two."), Segment(7, 8, "Three.")]
    assert plain_text(segments) == "One. Two.\n\nThree."


def test_empty_answers_are_skipped():
    parts = [part(0, 0, 10, [(0, 1, "  ")], text=""), part(1, 10, 20, [(0, 1, "Hello.")])]
    assert [s.text for s in stitch(parts)] == ["Hello."]
