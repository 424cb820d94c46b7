"""Utterance segmentation on hand-made probability sequences (auto/realtime listen, §1.3)."""

from __future__ import annotations

import numpy as np
import pytest

from asr_tts.segmenter import Segmenter, SegmenterConfig, SegmentEvent

START, END, CUT = SegmentEvent.SPEECH_START, SegmentEvent.SPEECH_END, SegmentEvent.CUT
PAUSE, RESUME = SegmentEvent.PAUSE, SegmentEvent.RESUME
CHUNK = 0.05  # 20 windows per second keeps the arithmetic readable
W = 512  # samples per VAD window
W_S = W / 16000


def events(
    seg: Segmenter, probs: list[float], chunk: float = CHUNK
) -> list[tuple[int, SegmentEvent]]:
    """Run `probs` through `seg`; return (window index, event) for every event."""
    out = []
    for i, p in enumerate(probs):
        if (event := seg.process(chunk, p)) is not None:
            out.append((i, event))
    return out


def test_speech_starts_once_it_lasted_min_speech() -> None:
    seg = Segmenter(SegmenterConfig())
    assert events(seg, [0.1] * 10 + [0.9] * 20) == [(14, START)]  # 5 windows = 0.25 s
    assert seg.in_speech


@pytest.mark.parametrize("chunk", [0.01, 0.032, 0.05, 0.1])
def test_float_sums_of_windows_reach_their_limit(chunk: float) -> None:
    seg = Segmenter(SegmenterConfig(min_speech_s=0.3))
    got = events(seg, [1.0] * 40, chunk)
    assert got[0] == (round(np.ceil(round(0.3 / chunk, 6))) - 1, START)


def test_a_click_shorter_than_min_speech_starts_nothing() -> None:
    seg = Segmenter(SegmenterConfig())
    click = [0.99] * 4 + [0.0] * 3  # 0.2 s of "speech"
    assert events(seg, [0.0] * 5 + click * 6) == []
    assert not seg.in_speech


def test_probability_equal_to_threshold_is_speech() -> None:
    seg = Segmenter(SegmenterConfig(threshold=0.6))
    assert events(seg, [0.6] * 5) == [(4, START)]
    assert events(Segmenter(SegmenterConfig(threshold=0.6)), [0.59] * 50) == []


def test_utterance_ends_after_min_silence() -> None:
    seg = Segmenter(SegmenterConfig())
    got = events(seg, [0.9] * 10 + [0.05] * 20)
    assert got == [(4, START), (21, END)]  # 12 windows = 0.6 s of silence
    assert not seg.in_speech


def test_a_pause_shorter_than_min_silence_keeps_the_utterance() -> None:
    seg = Segmenter(SegmenterConfig())
    pause = [0.05] * 11  # 0.55 s
    got = events(seg, [0.9] * 10 + pause + [0.9] * 3 + pause + [0.9] + [0.0] * 12)
    assert got == [(4, START), (10 + 11 + 3 + 11 + 1 + 11, END)]


def test_wavering_probability_inside_speech_is_not_silence() -> None:
    seg = Segmenter(SegmenterConfig(threshold=0.5, hysteresis=0.15))
    assert events(seg, [0.9] * 5 + [0.4] * 100) == [(4, START)]
    # Once silence has begun, the in-between band does not interrupt it.
    seg = Segmenter(SegmenterConfig(threshold=0.5, hysteresis=0.15))
    assert events(seg, [0.9] * 5 + [0.1] + [0.4] * 11) == [(4, START), (16, END)]


def test_utterance_is_cut_at_max_length_and_speech_goes_on() -> None:
    seg = Segmenter(SegmenterConfig(max_utterance_s=2.0))
    got = events(seg, [0.9] * 50)
    # 2.0 s counted from the first speech window (index 0) ends at index 39; the speech
    # that continues is a new utterance after another min_speech_s.
    assert got == [(4, START), (39, CUT), (44, START)]


def test_natural_end_wins_over_cut_on_the_same_window() -> None:
    seg = Segmenter(SegmenterConfig(max_utterance_s=1.0, min_silence_s=0.5))
    assert events(seg, [0.9] * 10 + [0.0] * 10) == [(4, START), (19, END)]


def test_early_silence_reports_each_pause_once_and_speech_coming_back() -> None:
    seg = Segmenter(SegmenterConfig(early_silence_s=0.2))
    pause = [0.05] * 5  # 0.25 s: a pause, not an end
    got = events(seg, [0.9] * 10 + pause + [0.9] * 3 + [0.0] * 12)
    assert got == [(4, START), (13, PAUSE), (15, RESUME), (21, PAUSE), (29, END)]


def test_early_silence_off_reports_no_pause() -> None:
    seg = Segmenter(SegmenterConfig(early_silence_s=0.0))
    assert events(seg, [0.9] * 10 + [0.05] * 5 + [0.9] * 3 + [0.0] * 12) == [(4, START), (29, END)]


def test_a_cut_while_paused_is_a_cut() -> None:
    seg = Segmenter(SegmenterConfig(max_utterance_s=1.0, early_silence_s=0.1))
    assert events(seg, [0.9] * 17 + [0.0] * 5) == [(4, START), (18, PAUSE), (19, CUT)]


def test_reset_forgets_speech_in_progress() -> None:
    seg = Segmenter(SegmenterConfig())
    assert events(seg, [0.9] * 6) == [(4, START)]
    seg.reset()
    assert not seg.in_speech
    assert events(seg, [0.0] * 20) == []  # no END for an utterance that was reset
    assert events(seg, [0.9] * 4) == []
    seg.reset()  # also forgets a partial speech run
    assert events(seg, [0.9] * 4) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"hysteresis": 0.6},
        {"min_silence_s": -1.0},
        {"max_utterance_s": 0.2},
        {"early_silence_s": 0.6},
        {"early_silence_s": -0.1},
    ],
)
def test_inconsistent_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="threshold|duration|max_utterance|early_silence"):
        SegmenterConfig(**kwargs)


def test_window_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Segmenter(SegmenterConfig()).process(0.0, 0.9)
