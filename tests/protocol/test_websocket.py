"""The RFC 6455 frames the relay writes (protocol/websocket.py), bytes only; every end-to-end
test reads them back with aiohttp's client."""

from __future__ import annotations

import pytest

from protocol.websocket import FIN_BINARY, FIN_TEXT, MaskCheck, close_frame, frame


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


def test_close_frame_bytes() -> None:
    assert close_frame(1002) == b"\x88\x02\x03\xea"


def client_frame(payload: bytes, *, masked: bool = True, first: int = FIN_BINARY) -> bytes:
    """A client's frame as RFC 6455 §5.2 lays it out, built here independently of `frame`."""
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes([first, bit | size])
    elif size < 65536:
        head = bytes([first, bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# A stream of masked frames of every length form, including empty and 64-bit lengths.
MASKED = b"".join(client_frame(bytes(n)) for n in (0, 1, 125, 126, 300, 65535, 65536, 7))


def test_masked_stream_in_one_piece_passes() -> None:
    assert MaskCheck().feed(MASKED)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 13, 4096])
def test_masked_stream_in_pieces_passes(step: int) -> None:
    check = MaskCheck()
    assert all(check.feed(MASKED[i : i + step]) for i in range(0, len(MASKED), step))


@pytest.mark.parametrize("size", [0, 5, 200, 70000])
@pytest.mark.parametrize("step", [1, 3, 1000, 200000])
def test_unmasked_frame_after_masked_ones_is_found(size: int, step: int) -> None:
    stream = MASKED + client_frame(bytes(size), masked=False)
    check = MaskCheck()
    bad = (len(MASKED) + 1) // step  # the piece holding the unmasked frame's second byte
    results = [check.feed(stream[i : i + step]) for i in range(0, (bad + 1) * step, step)]
    assert results == [True] * bad + [False]


def test_unmasked_control_frame_is_found() -> None:
    assert not MaskCheck().feed(client_frame(b"", masked=False, first=0x89))  # ping


def test_an_empty_piece_changes_nothing() -> None:
    check = MaskCheck()
    assert check.feed(b"")
    assert check.feed(MASKED)
    assert check.feed(b"")
    assert not check.feed(client_frame(b"x", masked=False))
