"""Where long audio is cut: in silences near the limit, else hard with an overlap;
and the media helpers that measure audio (including a webm without duration)."""

from __future__ import annotations

import itertools

import pytest

from tests.fakes.voxtral import PAUSE_SECONDS, encode, random_script, synthesize, tone_audio
from transcription import media
from transcription.splitting import ChunkPlan, plan_chunks


def covers(chunks: list[ChunkPlan], duration: float) -> None:
    assert chunks[0].start == 0 and chunks[-1].end == pytest.approx(duration)
    for before, after in itertools.pairwise(chunks):
        assert after.start == pytest.approx(before.end - after.overlap)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_short_audio_is_one_chunk():
    assert plan_chunks(42.0, [], max_seconds=60, search_seconds=10, overlap_seconds=2) == [
        ChunkPlan(0, 0.0, 42.0)
    ]


def test_it_cuts_in_the_silence_closest_to_the_limit():
    silences = [(20.0, 21.0), (52.0, 53.0), (58.0, 58.6), (75.0, 76.0), (110.0, 111.0)]
    chunks = plan_chunks(150.0, silences, max_seconds=60, search_seconds=10, overlap_seconds=2)
    # 58.3 (middle of the last pause before 60), then the pause before 118.3: 110.5.
    assert [round(c.end, 2) for c in chunks] == [58.3, 110.5, 150.0]
    assert all(c.overlap == 0 for c in chunks)
    assert all(c.duration <= 60 for c in chunks)
    covers(chunks, 150.0)


def test_without_a_silence_in_reach_it_cuts_hard_with_an_overlap():
    # The only pause is too early (outside the search window).
    chunks = plan_chunks(130.0, [(10.0, 11.0)], max_seconds=60, search_seconds=10, overlap_seconds=2)
    assert [(c.start, c.end, c.overlap) for c in chunks] == [
        (0.0, 60.0, 0.0),
        (58.0, 118.0, 2),
        (116.0, 130.0, 2),
    ]
    assert all(c.duration <= 60 for c in chunks)
    covers(chunks, 130.0)


def test_a_silence_across_the_limit_is_cut_before_the_limit():
    chunks = plan_chunks(100.0, [(57.0, 64.0)], max_seconds=60, search_seconds=10, overlap_seconds=2)
    assert chunks[0].end == pytest.approx(58.5) and chunks[0].overlap == 0
    assert chunks[1].start == pytest.approx(58.5)


def test_it_mixes_silence_cuts_and_hard_cuts():
    chunks = plan_chunks(200.0, [(55.0, 56.0)], max_seconds=60, search_seconds=10, overlap_seconds=3)
    assert chunks[0].end == pytest.approx(55.5) and chunks[1].overlap == 0
    assert chunks[2].overlap == 3 and chunks[2].start == pytest.approx(chunks[1].end - 3)
    assert all(c.duration <= 60 + 1e-9 for c in chunks)
    covers(chunks, 200.0)


def test_silencedetect_finds_the_pauses_between_sentences(tmp_path):
    script = random_script(3, 24, sentence=(6, 6))
    samples, timeline = synthesize(script)
    wav = encode(samples, tmp_path / "a.wav")
    silences = media.detect_silences(wav, noise_db=-35, min_seconds=0.4)
    # The lead-in, then one pause after each sentence (the last runs to the end of the file).
    assert silences[0] == pytest.approx((0.0, timeline[0].start), abs=0.05)
    sentence_ends = [timeline[i].end for i in range(5, len(timeline), 6)]
    assert len(silences) == 1 + len(sentence_ends)
    for (start, end), spoken_end in zip(silences[1:], sentence_ends, strict=True):
        assert start == pytest.approx(spoken_end, abs=0.05)
        assert end - start >= min(PAUSE_SECONDS, 0.4) - 0.05


def test_a_browser_webm_has_no_duration_in_its_header_but_decoding_measures_it(tmp_path):
    script = random_script(4, 30)
    webm = tmp_path / "recording.webm"
    timeline = tone_audio(webm, script, pipe=True)
    probe = media.probe_audio(webm)
    assert probe.demuxer == "matroska" and probe.codec == "opus"
    assert probe.duration is None
    duration, errors = media.normalise(webm, tmp_path / "out.wav", demuxer=probe.demuxer)
    assert duration == pytest.approx(timeline[-1].end + PAUSE_SECONDS + 0.5, abs=0.1)
    assert errors == ""


@pytest.mark.parametrize("suffix", [".mp3", ".wav", ".m4a", ".ogg", ".flac", ".webm"])
def test_every_accepted_format_probes_as_audio(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    tone_audio(path, random_script(5, 6))
    probe = media.probe_audio(path)
    assert probe.demuxer in media.AUDIO_DEMUXERS
    assert probe.duration == pytest.approx(0.5 + 6 * 0.5 - 0.12 + PAUSE_SECONDS + 0.5, abs=0.15)


def test_an_ffmpeg_run_past_its_time_limit_is_stopped(tmp_path):
    with pytest.raises(media.MediaError, match="took longer than 1 s"):
        media.run_tool(
            ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "sine=d=30", "-f", "null", "-"], timeout=1
        )


def test_an_ffmpeg_run_stops_when_the_job_is_stopped():
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(media.MediaStopped):
        media.run_tool(
            ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "sine=d=30", "-f", "null", "-"],
            should_stop=stop,
        )
