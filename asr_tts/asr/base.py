"""The ASR provider interface: one utterance of 16 kHz mono s16le PCM in, its text out."""

from __future__ import annotations

import struct
from typing import Protocol, runtime_checkable

from asr_tts.errors import Reason

SAMPLE_RATE = 16000  # every provider takes 16 kHz mono signed 16-bit little-endian PCM
BYTES_PER_SECOND = SAMPLE_RATE * 2
# The VAD segmenter cuts utterances far shorter; this bounds what a batch provider buffers.
MAX_UTTERANCE_S = 120


class ASRError(Exception):
    """A speech recognition provider failed; the message is for logs and never reaches a peer,
    the reason (asr_tts/errors.py) is what the relay counts the failure by."""

    def __init__(self, message: str, *, reason: Reason = "other") -> None:
        super().__init__(message)
        self.reason: Reason = reason


class ASRStream(Protocol):
    """One utterance being recognised: feed it audio, then finish or cancel it exactly once.

    Audio fed after finish() or cancel() is ignored.
    """

    async def feed(self, pcm: bytes) -> None:
        """Take the next audio of the utterance; raise ASRError when the provider has failed."""
        ...

    async def finish(self) -> str:
        """End the utterance and return its text ("" when nothing was recognised)."""
        ...

    async def cancel(self) -> None:
        """Abandon the utterance and release its resources; idempotent, safe after finish()."""
        ...


@runtime_checkable
class EarlyStream(Protocol):
    """A batch stream that can begin decoding the audio so far while the utterance may still
    go on (early recognition, at a pause the VAD reports): finish() then returns that text,
    unless discard_early() said that speech went on after it."""

    def start_early(self) -> bool:
        """Begin decoding the audio received so far; False when not begun (nothing to do)."""
        ...

    def discard_early(self) -> None:
        """Speech went on: finish() decodes the whole utterance, not the early audio."""
        ...


class ASRProvider(Protocol):
    """Something that opens recognition streams, one per utterance."""

    name: str

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Start recognising an utterance; raise ASRError when the provider is unavailable."""
        ...


_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_from_pcm(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Wrap mono s16le `pcm` in a canonical 44-byte RIFF/WAVE header."""
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    header = _WAV_HEADER.pack(
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,  # PCM fmt chunk size
        1,  # WAVE_FORMAT_PCM
        1,  # channels
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        len(pcm),
    )
    return header + pcm
