"""Opus packets in an Ogg file (RFC 7845 on RFC 3533), the audio `POST /api/v1/tts` returns
for `"format":"opus"`: browsers, ffplay, VLC and mpv play it as it is, where bare packets
would need our framing to be understood first."""

from __future__ import annotations

import struct
from collections.abc import Sequence

_PAGE = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, segments
_FIRST, _LAST = 0x02, 0x04  # header type flags: beginning and end of the stream
_GRANULE_RATE = 48000  # RFC 7845 §4: granule positions count 48 kHz samples, whatever the rate
# Samples (at 48 kHz) a player drops from the start: libopus's encoder delay, 6.5 ms, which is
# what it reports at every rate for the application the relay encodes with.
PRE_SKIP = 312
_MAX_SEGMENTS = 255
_SERIAL = 0x52454C59  # one logical stream per file: any constant serves
_VENDOR = b"voice-relay"


def _crc_table() -> list[int]:
    """RFC 3533 §6: CRC-32, polynomial 0x04c11db7, not reflected, initial value and final
    XOR 0."""
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ byte]
    return crc


def _lacing(size: int) -> bytes:
    """A packet's segment table entries: 255 per whole 255 bytes, then the remainder (0 when
    the packet is a multiple of 255 bytes long, which marks its end)."""
    return bytes([255] * (size // 255) + [size % 255])


def _page(packets: Sequence[bytes], granule: int, seq: int, flags: int) -> bytes:
    lacing = b"".join(_lacing(len(p)) for p in packets)
    head = _PAGE.pack(b"OggS", 0, flags, granule, _SERIAL, seq, 0, len(lacing))
    page = bytearray(head + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, _crc(bytes(page)))  # the CRC field is at byte 22
    return bytes(page)


def opus_head(channels: int, input_rate: int) -> bytes:
    """The identification header (RFC 7845 §5.1), channel mapping family 0 (mono, stereo)."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, PRE_SKIP, input_rate, 0, 0)


def opus_tags() -> bytes:
    """The comment header (RFC 7845 §5.2): our vendor string, no comments."""
    return b"OpusTags" + struct.pack("<I", len(_VENDOR)) + _VENDOR + struct.pack("<I", 0)


def ogg_opus(packets: Sequence[bytes], frame_s: float, input_rate: int, channels: int = 1) -> bytes:
    """The whole file: headers on pages of their own, then the packets (each `frame_s` of
    audio), as many per page as its segment table holds; the last page is marked so. Give at
    least one packet: players refuse a stream without audio."""
    step = round(frame_s * _GRANULE_RATE)
    pages = [
        _page([opus_head(channels, input_rate)], 0, 0, _FIRST),
        _page([opus_tags()], 0, 1, 0),
    ]
    batch: list[bytes] = []
    segments, done = 0, 0
    for packet in packets:
        need = len(packet) // 255 + 1
        if batch and segments + need > _MAX_SEGMENTS:
            pages.append(_page(batch, PRE_SKIP + done * step, len(pages), 0))
            batch, segments = [], 0
        batch.append(packet)
        segments += need
        done += 1
    pages.append(_page(batch, PRE_SKIP + done * step, len(pages), _LAST))
    return b"".join(pages)
