"""The RFC 6455 frames the relay writes (protocol/websocket.py), bytes only; every end-to-end
test reads them back with aiohttp's client."""

from __future__ import annotations

import pytest

from protocol.websocket import FIN_BINARY, FIN_TEXT, frame


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_length_forms(size: int, header: bytes) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    out = frame(FIN_BINARY, payload)
    assert out[: len(header)] == header
    assert out[len(header) :] == payload


def test_text_frame_bytes() -> None:
    assert frame(FIN_TEXT, b'{"type":"pong"}') == b"\x81\x0f" + b'{"type":"pong"}'
