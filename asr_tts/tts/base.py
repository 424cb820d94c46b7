"""The TTS provider interface: a voice choice in, mono 16-bit PCM out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Voice:
    """The voice a business chat event asks for (docs/protocol.md §2.2); None means the default."""

    provider: str | None = None  # the event's "tts_provider"
    voice_type: str | None = None
    speed_ratio: float = 1.0
    pitch_ratio: float = 1.0


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


class TTSError(Exception):
    """A TTS provider failed; the message is for logs and never reaches a peer."""


class TTSProvider(Protocol):
    """Something that turns one sentence of text into speech."""

    name: str

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` with `voice`; raise TTSError when the provider fails."""
        ...
