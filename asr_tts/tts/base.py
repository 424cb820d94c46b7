"""The TTS provider interface: a voice choice in, mono 16-bit PCM out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from asr_tts.errors import Reason
from asr_tts.pcm import Pcm


@dataclass(frozen=True, slots=True)
class Voice:
    """The voice a business chat event asks for (docs/protocol.md §2.2); None means the default."""

    provider: str | None = None  # the event's "tts_provider"
    voice_type: str | None = None
    speed_ratio: float = 1.0
    pitch_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class VoiceList:
    """What a provider can speak, as `GET /api/v1/voices` lists it: the names a business may
    send as `voice_type`, the voice that speaks each language when it sends none ("*": any
    language), and whether `voice_type` may also mix named voices (Kokoro's blends)."""

    engine: str
    voices: tuple[str, ...]
    defaults: Mapping[str, str] = field(default_factory=dict)
    blends: bool = False


class TTSError(Exception):
    """A TTS provider failed; the message is for logs and never reaches a peer, the reason
    (asr_tts/errors.py) is what the relay counts the failure by."""

    def __init__(self, message: str, *, reason: Reason = "other") -> None:
        super().__init__(message)
        self.reason: Reason = reason


class TTSProvider(Protocol):
    """Something that turns one sentence of text into speech."""

    name: str

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` with `voice`; raise TTSError when the provider fails."""
        ...

    async def voice_list(self) -> VoiceList:
        """The voices this provider can speak (never raises: an empty list if it cannot tell)."""
        ...


@runtime_checkable
class StreamingTTSProvider(TTSProvider, Protocol):
    """A provider that can also hand out a sentence's audio as the service produces it."""

    def stream(self, text: str, voice: Voice) -> AsyncGenerator[Pcm, None]:
        """Speak `text`, yielding its audio in order, all at one sample rate; raise TTSError
        when the provider fails. Closing the generator releases the provider's resources."""
        ...
