"""Real device audio for the voice benchmarks: espeak-ng speech as 16 kHz PCM and as the
uplink a device sends (Opus, 16 kHz mono, 60 ms packets; docs/protocol.md §1.4).

Everything is made once per run, with a time limit on every espeak-ng call.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from asr_tts.codec import FrameEncoder, pcm_from_wav, resample
from asr_tts.pcm import Pcm
from protocol.audio_format import AudioFormat

RATE = 16000
FRAME_MS = 60
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2  # one 60 ms frame of 16 kHz s16le
# The uplink a device declares in its hello: Opus, 16 kHz mono, 60 ms (docs/protocol.md §1.2).
UPLINK = AudioFormat("opus", RATE, 1, FRAME_MS)


def espeak(text: str, voice: str = "en-us", wpm: int = 140) -> bytes:
    """`text` spoken by espeak-ng, as 16 kHz mono s16le."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(  # noqa: S603 - fixed argv, text passed after "--"
        ["espeak-ng", "--stdout", "-b1", f"-v{voice}", f"-s{wpm}", "--", text],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return resample(pcm_from_wav(wav), RATE).samples


def trim(pcm: bytes, floor: int = 64) -> bytes:
    """`pcm` without the near-silent samples espeak-ng puts before and after the speech."""
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > floor)
    if not loud.size:
        return b""
    return x[loud[0] : loud[-1] + 1].tobytes()


def silence(seconds: float) -> bytes:
    """Digital silence, whole 60 ms frames."""
    return bytes(FRAME_BYTES * max(0, round(seconds / FRAME_S)))


def pad_to_frames(pcm: bytes) -> bytes:
    """`pcm` padded with silence to whole 60 ms frames."""
    return pcm + bytes(-len(pcm) % FRAME_BYTES)


def opus_packets(pcm: bytes) -> list[bytes]:
    """`pcm` (16 kHz s16le) as the Opus packets a device sends, one per 60 ms (fresh encoder)."""
    return FrameEncoder(UPLINK).encode(Pcm(pad_to_frames(pcm), RATE))
