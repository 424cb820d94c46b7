"""Speech PCM: resampling, WAV parsing, Opus/PCM downlink frames (docs/protocol.md §1.4)."""

from __future__ import annotations

import struct

import numpy as np
import opuslib_next
import soxr

from asr_tts.pcm import Pcm
from protocol.audio_format import AudioFormat

_MAX_OPUS_FRAME_MS = 120
_CHUNK = struct.Struct("<4sI")  # RIFF chunk header: id, size
_FMT = struct.Struct("<HHIIHH")  # format tag, channels, rate, byte rate, block align, bits


def resample(pcm: Pcm, rate: int) -> Pcm:
    """Convert `pcm` to `rate` Hz with soxr; returns `pcm` itself when the rate already matches."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    if pcm.sample_rate == rate:
        return pcm
    x = np.frombuffer(pcm.samples, dtype="<i2")
    y = soxr.resample(x, pcm.sample_rate, rate)
    return Pcm(y.astype("<i2").tobytes(), rate)


def pcm_from_wav(data: bytes) -> Pcm:
    """Parse a 16-bit PCM WAV file, several channels mixed down to one (a partner's recording,
    `POST /api/v1/stt`); raise ValueError when it is anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    offset, rate, channels = 12, 0, 1
    while offset + _CHUNK.size <= len(data):
        chunk_id, size = _CHUNK.unpack_from(data, offset)
        body = offset + _CHUNK.size
        if chunk_id == b"fmt ":
            if size < _FMT.size or body + _FMT.size > len(data):
                raise ValueError("truncated fmt chunk")
            tag, channels, rate, _byte_rate, _align, bits = _FMT.unpack_from(data, body)
            # 0xFFFE is WAVE_FORMAT_EXTENSIBLE; its sub-format is PCM in every file we accept.
            if tag not in (1, 0xFFFE) or not 1 <= channels <= 8 or bits != 16 or rate <= 0:
                raise ValueError(f"unsupported WAV format {tag}/{channels}ch/{bits}bit/{rate}Hz")
        elif chunk_id == b"data":
            if not rate:
                raise ValueError("data chunk before fmt chunk")
            # A WAV streamed to a pipe (espeak-ng --stdout) carries a placeholder size
            # (0x7ffff000): the samples run to the end of the input.
            end = min(body + size, len(data))
            end -= (end - body) % (2 * channels)
            return _mixed(bytes(data[body:end]), channels, rate)
        offset = body + size + (size & 1)  # chunks are padded to an even length
    raise ValueError("WAV without a data chunk")


def _mixed(samples: bytes, channels: int, rate: int) -> Pcm:
    """Interleaved s16le `samples` of `channels` channels as mono: their mean."""
    if channels == 1:
        return Pcm(samples, rate)
    x = np.frombuffer(samples, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return Pcm((x.sum(axis=1) // channels).astype("<i2").tobytes(), rate)


class FrameEncoder:
    """Cuts an answer's PCM into downlink frames; one per answer stream, not thread-safe."""

    def __init__(self, fmt: AudioFormat) -> None:
        if problem := fmt.encode_problem():
            raise ValueError(f"cannot send {problem}")
        self._encoder: opuslib_next.Encoder | None = None
        if fmt.format == "opus":
            # Opus keeps state across frames, so one encoder spans the whole answer.
            self._encoder = opuslib_next.Encoder(
                fmt.sample_rate, fmt.channels, opuslib_next.APPLICATION_AUDIO
            )
        self.fmt = fmt

    def encode(self, pcm: Pcm) -> list[bytes]:
        """Return `pcm` as whole frames of the downlink format, the last one padded with silence."""
        return self.encode_frames(self.cut(pcm))

    def cut(self, pcm: Pcm) -> list[bytes]:
        """`pcm` resampled and cut into frames of raw s16le samples, the last one padded."""
        fmt = self.fmt
        x = np.frombuffer(resample(pcm, fmt.sample_rate).samples, dtype="<i2")
        if not x.size:
            return []
        if fmt.channels > 1:
            x = np.repeat(x, fmt.channels)  # mono to interleaved channels
        step = fmt.frame_samples * fmt.channels
        x = np.concatenate([x, np.zeros(-x.size % step, dtype="<i2")])
        raw = x.tobytes()
        return [raw[i : i + 2 * step] for i in range(0, len(raw), 2 * step)]

    def encode_frames(self, frames: list[bytes]) -> list[bytes]:
        """Encode frames from `cut`, in order (Opus state runs on from the previous call)."""
        if self._encoder is None:
            return frames
        n = self.fmt.frame_samples
        return [bytes(self._encoder.encode(f, n)) for f in frames]


class OpusDecoder:
    """Decodes Opus packets to s16le PCM (tests, and later the uplink)."""

    def __init__(self, sample_rate: int, channels: int = 1, frame_duration_ms: int = 60) -> None:
        self._decoder = opuslib_next.Decoder(sample_rate, channels)
        self._frame_samples = sample_rate * frame_duration_ms // 1000
        self._max_samples = sample_rate * _MAX_OPUS_FRAME_MS // 1000

    def decode(self, packet: bytes) -> bytes:
        """Decode one packet; an empty packet (a lost one) yields one frame of concealment."""
        # The output buffer fits any legal packet; libopus returns what the packet really holds.
        size = self._max_samples if packet else self._frame_samples
        return bytes(self._decoder.decode(packet, size))
