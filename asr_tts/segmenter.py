"""Utterance segmentation from VAD probabilities: pure, no clock and no I/O (auto/realtime, §1.3).

`Segmenter` turns one probability per VAD window into start/end events; time is the sum of
the window lengths it is given. With `early_silence_s` set it also reports the first pause
inside an utterance (PAUSE) and speech coming back after it (RESUME), so that a batch
recogniser may start on the audio so far before the utterance is known to have ended. The
relay keeps the pre-roll and streams each utterance to ASR (relay/device/listener.py):

    for p in vad.process(pcm):
        event = segmenter.process(VadStream.WINDOW_S, p)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_EPS = 1e-9  # sums of float window lengths must reach a limit they equal on paper


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Thresholds and durations that decide where an utterance starts and ends."""

    threshold: float = 0.5  # probability >= threshold is speech
    min_speech_s: float = 0.25  # speech shorter than this is ignored (clicks)
    min_silence_s: float = 0.6  # silence that ends an utterance (VAD hangover)
    pre_roll_s: float = 0.3  # audio kept from before speech start
    max_utterance_s: float = 15.0  # an utterance is cut (ended) here
    # Inside speech, a window is silence only below threshold - hysteresis (Silero's own
    # get_speech_timestamps uses 0.15): the probability wavers between syllables.
    hysteresis: float = 0.15
    # Silence after which a pause is reported (PAUSE) before the utterance ends; 0: never.
    early_silence_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or not 0.0 <= self.hysteresis < self.threshold:
            raise ValueError(f"invalid threshold/hysteresis in {self}")
        if min(self.min_speech_s, self.min_silence_s, self.pre_roll_s, self.early_silence_s) < 0:
            raise ValueError(f"negative duration in {self}")
        if self.max_utterance_s <= self.min_speech_s:
            raise ValueError(f"max_utterance_s must exceed min_speech_s in {self}")
        if self.early_silence_s and self.early_silence_s >= self.min_silence_s:
            raise ValueError(f"early_silence_s must be below min_silence_s in {self}")


class SegmentEvent(Enum):
    """What a VAD window changed about the utterance."""

    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    CUT = "cut"  # max_utterance_s reached; the utterance ends here
    PAUSE = "pause"  # early_silence_s of silence: the utterance may be ending
    RESUME = "resume"  # speech again after a PAUSE: the utterance goes on


class Segmenter:
    """Speech start/end detector over a stream of (window length, probability) pairs."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        self.cfg = cfg
        self._in_speech = False
        self._speech_run = 0.0  # idle: consecutive speech so far
        self._silence_run = 0.0  # in speech: trailing silence so far
        self._utterance_s = 0.0  # in speech: length since the first speech window
        self._paused = False  # in speech: PAUSE reported, no speech since

    @property
    def in_speech(self) -> bool:
        """True between SPEECH_START and the SPEECH_END or CUT that follows it."""
        return self._in_speech

    def reset(self) -> None:
        """Forget everything, as if no audio had been seen."""
        self._in_speech = False
        self._speech_run = self._silence_run = self._utterance_s = 0.0
        self._paused = False

    def process(self, chunk_s: float, probability: float) -> SegmentEvent | None:
        """Account one VAD window of `chunk_s` seconds; return the event it causes, if any."""
        if chunk_s <= 0:
            raise ValueError(f"window length must be positive, got {chunk_s}")
        cfg = self.cfg
        if not self._in_speech:
            if probability < cfg.threshold:
                self._speech_run = 0.0  # a click shorter than min_speech_s is forgotten
                return None
            self._speech_run += chunk_s
            if self._speech_run + _EPS < cfg.min_speech_s:
                return None
            self._in_speech = True
            self._utterance_s, self._silence_run = self._speech_run, 0.0
            return SegmentEvent.SPEECH_START
        self._utterance_s += chunk_s
        resumed = False
        if probability >= cfg.threshold:
            self._silence_run = 0.0
            resumed, self._paused = self._paused, False
        elif probability < cfg.threshold - cfg.hysteresis or self._silence_run > 0:
            self._silence_run += chunk_s
        if self._silence_run + _EPS >= cfg.min_silence_s:
            self.reset()
            return SegmentEvent.SPEECH_END
        if self._utterance_s + _EPS >= cfg.max_utterance_s:
            self.reset()
            return SegmentEvent.CUT
        if resumed:
            return SegmentEvent.RESUME
        return self._pause()

    def _pause(self) -> SegmentEvent | None:
        """PAUSE once per silence that has lasted early_silence_s, if that is set."""
        early = self.cfg.early_silence_s
        if early <= 0 or self._paused or self._silence_run + _EPS < early:
            return None
        self._paused = True
        return SegmentEvent.PAUSE
