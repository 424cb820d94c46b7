"""The audio every speech module passes around: mono 16-bit PCM at a sample rate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pcm:
    """Mono signed 16-bit little-endian samples at a sample rate."""

    samples: bytes
    sample_rate: int

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")
        if len(self.samples) % 2:
            raise ValueError("16-bit PCM must have an even number of bytes")

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.samples) / 2 / self.sample_rate
