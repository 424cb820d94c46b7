"""Uplink audio: one device packet in, mono s16le PCM at the recognizer's rate out (§1.2, §1.4)."""

from __future__ import annotations

import ctypes

import numpy as np
import opuslib_next
import opuslib_next.api.decoder
import soxr

from protocol.audio_format import OPUS_SAMPLE_RATES, AudioFormat

_MAX_OPUS_FRAME_MS = 120  # the longest packet libopus may hold (RFC 6716 §3.2.5)
# ctypes binding of opus_decode(state, data, len, pcm, frame_size, decode_fec)
_opus_decode = opuslib_next.api.decoder.libopus_decode


class AudioError(ValueError):
    """A packet or frame that cannot be decoded; the relay counts it and drops it."""


class UplinkDecoder:
    """Decodes one device audio stream to mono s16le; Opus keeps state, so not thread-safe."""

    def __init__(self, fmt: AudioFormat, target_rate: int = 16000) -> None:
        if problem := fmt.decode_problem():
            raise ValueError(f"cannot decode {problem}")
        if target_rate <= 0:
            raise ValueError(f"target rate must be positive, got {target_rate}")
        self.fmt = fmt
        self.target_rate = target_rate
        self._opus: opuslib_next.Decoder | None = None
        rate = fmt.sample_rate
        if fmt.format == "opus":
            # libopus decodes any stream at any of its rates and folds stereo into mono
            # itself (RFC 6716 §4), which is cheaper than decoding as sent and resampling.
            if target_rate in OPUS_SAMPLE_RATES:
                rate = target_rate
            self._opus = opuslib_next.Decoder(rate, 1)
            self._buf = (ctypes.c_int16 * (rate * _MAX_OPUS_FRAME_MS // 1000))()
        self._frame_bytes = 2 * fmt.channels
        # A streaming resampler carries its filter state across packets: no click at the seams.
        self._resampler = (
            soxr.ResampleStream(rate, target_rate, 1, dtype="int16")
            if rate != target_rate
            else None
        )

    def decode(self, packet: bytes) -> bytes:
        """Return one packet as mono s16le at `target_rate`; raise AudioError if it is not audio."""
        if not packet:
            raise AudioError("empty audio packet")
        if self._opus is not None:
            # libopus straight into a buffer kept per stream: opuslib_next's own decode()
            # converts the samples through a Python list, 2.3x the cost of the decode itself.
            buf = self._buf
            n = _opus_decode(self._opus.decoder_state, packet, len(packet), buf, len(buf), 0)
            if n < 0:
                raise AudioError(f"undecodable Opus packet ({len(packet)} bytes, error {n})")
            if self._resampler is None:
                return ctypes.string_at(buf, 2 * n)
            x = np.frombuffer(ctypes.string_at(buf, 2 * n), dtype="<i2")
        else:
            if len(packet) % self._frame_bytes:
                raise AudioError(
                    f"PCM frame of {len(packet)} bytes is not whole {self.fmt.channels}-channel "
                    "16-bit samples"
                )
            x = np.frombuffer(packet, dtype="<i2")
            if self.fmt.channels == 2:
                x = (x.reshape(-1, 2).astype(np.int32).sum(axis=1) // 2).astype("<i2")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return x.astype("<i2", copy=False).tobytes()
