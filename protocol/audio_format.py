"""The one audio format type (docs/protocol.md §1.2, §1.4): what a hello declares, what the
uplink decoder reads and what the downlink encoder writes, and how the downlink is chosen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Sample rates and frame lengths libopus accepts (RFC 6716 §2.1.4; 80-120 ms since libopus 1.2).
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (5, 10, 20, 40, 60, 80, 100, 120)
# The PCM rate the relay falls back to when a device's own rate cannot be cut into whole
# frames of any length it can send (8001 Hz, 12345 Hz ...).
PCM_FALLBACK_RATE = 16000

AudioCodec = Literal["opus", "pcm"]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Mono or stereo signed 16-bit audio, as Opus packets or raw little-endian PCM frames."""

    format: AudioCodec = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration_ms: int = 60

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one frame."""
        return self.sample_rate * self.frame_duration_ms // 1000

    @property
    def frame_s(self) -> float:
        """One frame's duration in seconds."""
        return self.frame_duration_ms / 1000

    def decode_problem(self) -> str | None:
        """Why the relay cannot decode this as an uplink, or None when it can."""
        if self.format not in ("opus", "pcm"):
            return f"unknown format {self.format!r}"
        if self.channels not in (1, 2) or self.sample_rate <= 0 or self.frame_duration_ms <= 0:
            return f"invalid format {self.describe()}"
        if self.format == "opus" and not self._opus_ok():
            return f"Opus cannot carry {self.describe()}"
        return None

    def encode_problem(self) -> str | None:
        """Why the relay cannot send frames in this format, or None when it can."""
        if problem := self.decode_problem():
            return problem
        if self.sample_rate * self.frame_duration_ms % 1000:
            ms, rate = self.frame_duration_ms, self.sample_rate
            return f"{ms} ms is not a whole number of samples at {rate} Hz"
        return None

    def describe(self) -> str:
        """`opus 16000 Hz x1 60 ms`, for errors and logs."""
        return f"{self.format} {self.sample_rate} Hz x{self.channels} {self.frame_duration_ms} ms"

    def _opus_ok(self) -> bool:
        return self.sample_rate in OPUS_SAMPLE_RATES and self.frame_duration_ms in OPUS_FRAME_MS


def downlink_for(uplink: AudioFormat, opus_rate: int, frame_ms: int) -> AudioFormat:
    """The downlink the relay sends a device that declared `uplink` (§1.2).

    Opus at the relay's configured rate and frame length; or, for a device that declared PCM
    (browser clients), mono PCM at the device's own rate. Frames must hold a whole number of
    samples: when `frame_ms` does not at that rate, the nearest frame length that does is
    used, and when none does, PCM at `PCM_FALLBACK_RATE`. The relay's hello declares the
    result, so the device configures its player from what it will really receive.
    """
    if uplink.format != "pcm":
        return AudioFormat("opus", opus_rate, 1, frame_ms)
    rate = uplink.sample_rate
    whole = [ms for ms in OPUS_FRAME_MS if ms >= 10 and rate * ms % 1000 == 0]
    if not whole:
        return AudioFormat("pcm", PCM_FALLBACK_RATE, 1, frame_ms)
    return AudioFormat("pcm", rate, 1, min(whole, key=lambda ms: (abs(ms - frame_ms), ms)))
