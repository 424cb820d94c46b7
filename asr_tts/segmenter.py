"""Utterance segmentation from VAD probabilities: pure, no clock and no I/O (auto/realtime, §1.3).

`Segmenter` turns one probability per VAD window into start/end events; time is the sum of
the window lengths it is given. `UtteranceCollector` follows the same windows over the PCM
and hands back each utterance's audio, pre-roll included, never holding more than
`pre_roll_s + min_speech_s + max_utterance_s` of it (each rounded up to whole windows).
The pre-roll is `pre_roll_s` rounded up to whole windows, plus at most one more window.

    probs = vad.process(pcm)
    collector.push(pcm)
    for p in probs:
        event = segmenter.process(VadStream.WINDOW_S, p)
        if (utterance := collector.advance(event)) is not None:
            ...  # hand the utterance to ASR
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_EPS = 1e-9  # sums of float window lengths must reach a limit they equal on paper
_WINDOW_SAMPLES = 512  # asr_tts.vad.VadStream.WINDOW_SAMPLES (not imported: it pulls onnxruntime)


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

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or not 0.0 <= self.hysteresis < self.threshold:
            raise ValueError(f"invalid threshold/hysteresis in {self}")
        if min(self.min_speech_s, self.min_silence_s, self.pre_roll_s) < 0:
            raise ValueError(f"negative duration in {self}")
        if self.max_utterance_s <= self.min_speech_s:
            raise ValueError(f"max_utterance_s must exceed min_speech_s in {self}")


class SegmentEvent(Enum):
    """What a VAD window changed about the utterance."""

    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    CUT = "cut"  # max_utterance_s reached; the utterance ends here


class Segmenter:
    """Speech start/end detector over a stream of (window length, probability) pairs."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        self.cfg = cfg
        self._in_speech = False
        self._speech_run = 0.0  # idle: consecutive speech so far
        self._silence_run = 0.0  # in speech: trailing silence so far
        self._utterance_s = 0.0  # in speech: length since the first speech window

    @property
    def in_speech(self) -> bool:
        """True between SPEECH_START and the SPEECH_END or CUT that follows it."""
        return self._in_speech

    def reset(self) -> None:
        """Forget everything, as if no audio had been seen."""
        self._in_speech = False
        self._speech_run = self._silence_run = self._utterance_s = 0.0

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
        if probability >= cfg.threshold:
            self._silence_run = 0.0
        elif probability < cfg.threshold - cfg.hysteresis or self._silence_run > 0:
            self._silence_run += chunk_s
        if self._silence_run + _EPS >= cfg.min_silence_s:
            self.reset()
            return SegmentEvent.SPEECH_END
        if self._utterance_s + _EPS >= cfg.max_utterance_s:
            self.reset()
            return SegmentEvent.CUT
        return None


class UtteranceCollector:
    """Pre-roll ring and utterance buffer for one stream, advanced one VAD window at a time."""

    def __init__(
        self, cfg: SegmenterConfig, sample_rate: int = 16000, window_samples: int = _WINDOW_SAMPLES
    ) -> None:
        if sample_rate <= 0 or window_samples <= 0:
            raise ValueError("sample rate and window must be positive")
        self._window = 2 * window_samples
        # At SPEECH_START the windows that proved speech are already in the ring; the
        # pre-roll is kept in front of them. Limits are whole windows, rounded up.
        self._ring_max = self._whole_windows(cfg.pre_roll_s + cfg.min_speech_s, sample_rate)
        self._utterance_max = self._ring_max + self._whole_windows(cfg.max_utterance_s, sample_rate)
        self._pending = bytearray()  # pushed, not yet matched with a VAD window
        self._ring = bytearray()
        self._utterance: bytearray | None = None

    def _whole_windows(self, seconds: float, rate: int) -> int:
        """Bytes of `seconds` of audio, rounded up to whole windows."""
        samples_2 = round(seconds * rate) * 2
        return -(-samples_2 // self._window) * self._window

    @property
    def in_utterance(self) -> bool:
        """True while an utterance is being collected."""
        return self._utterance is not None

    def reset(self) -> None:
        """Drop all audio held."""
        self._pending.clear()
        self._ring.clear()
        self._utterance = None

    def push(self, pcm: bytes) -> None:
        """Add the PCM that was just given to the VAD stream."""
        if len(self._pending) + len(pcm) > self._utterance_max + self._window:
            # The caller pushes what the VAD saw and advances once per window it returned,
            # so this only grows when that contract is broken.
            raise ValueError("push() ran ahead of advance()")
        self._pending += pcm

    def advance(self, event: SegmentEvent | None) -> bytes | None:
        """Consume one window with the segmenter's event for it; return the utterance at its end."""
        if len(self._pending) < self._window:
            raise ValueError("advance() without a whole window pushed")
        window = bytes(self._pending[: self._window])
        del self._pending[: self._window]
        if event is SegmentEvent.SPEECH_START:
            self._utterance = self._ring
            self._ring = bytearray()
        if self._utterance is None:
            self._ring += window
            del self._ring[: max(0, len(self._ring) - self._ring_max)]
            return None
        # The bound holds even when the segmenter's limits differ from this collector's.
        room = self._utterance_max - len(self._utterance)
        self._utterance += window[: max(0, room)]
        if event in (SegmentEvent.SPEECH_END, SegmentEvent.CUT):
            done, self._utterance = bytes(self._utterance), None
            return done
        return None
