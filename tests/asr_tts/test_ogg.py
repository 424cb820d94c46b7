"""Ogg Opus files (asr_tts/ogg.py) as libavformat reads them (it checks every page's CRC):
pages, lacing, granule positions."""

from __future__ import annotations

import io

import av
import numpy as np

from asr_tts.codec import FrameEncoder
from asr_tts.ogg import PRE_SKIP, ogg_opus
from asr_tts.pcm import Pcm
from protocol.audio_format import AudioFormat


def decoded_samples(data: bytes) -> int:
    """How many 48 kHz samples libavformat + libopus play from the file."""
    with av.open(io.BytesIO(data), mode="r") as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def test_a_long_answer_spans_pages_and_plays_whole() -> None:
    # Noise at a high rate gives packets over 255 bytes (two lacing values each), and 8 s of
    # 60 ms packets are more than one page's 255 segments.
    rng = np.random.default_rng(7)
    noise = rng.integers(-20000, 20000, 48000 * 8, dtype=np.int16).astype("<i2").tobytes()
    packets = FrameEncoder(AudioFormat("opus", 48000, 1, 60)).encode(Pcm(noise, 48000))
    assert max(len(p) for p in packets) > 255
    data = ogg_opus(packets, 0.06, 48000)
    assert data.count(b"OggS") >= 4  # two header pages, and the audio on two or more
    assert decoded_samples(data) == len(packets) * 2880 - PRE_SKIP


def test_a_packet_of_exactly_255_bytes_is_closed_by_a_zero_lacing_value() -> None:
    # RFC 3533 §6: a lacing value under 255 ends a packet, so a 255-byte one needs a 0 after.
    data = ogg_opus([b"\x01" * 10, b"\x02" * 255, b"\x03" * 20], 0.06, 24000)
    page = data[data.index(b"OggS", data.index(b"OpusTags")) :]
    assert page[26:31] == bytes([4, 10, 255, 0, 20])  # segment count, then the lacing values
