"""Binary audio frames, versions 1, 2 and 3 (docs/protocol.md §1.4): bytes in, frames out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.binary import (
    V3_MAX_PAYLOAD,
    BinaryFrame,
    FrameType,
    decode_frame,
    encode_frame,
    split_v3,
)
from protocol.errors import DeviceError, ProtocolError

OPUS = bytes(range(7))  # stands in for one Opus packet


def bad_frame(version: int, data: bytes) -> ProtocolError:
    """Decode `data`, expecting the BAD_FRAME protocol error."""
    with pytest.raises(ProtocolError) as info:
        decode_frame(version, data)
    assert info.value.code is DeviceError.BAD_FRAME
    return info.value


# ---- v1: the frame is the payload -------------------------------------------------------


def test_v1_encode_is_the_raw_payload() -> None:
    assert encode_frame(1, OPUS) == OPUS


def test_v1_decode_is_one_audio_packet() -> None:
    assert decode_frame(1, OPUS) == BinaryFrame(FrameType.AUDIO, OPUS, 0)


def test_v1_empty_frame_is_empty_audio() -> None:
    assert decode_frame(1, b"") == BinaryFrame(FrameType.AUDIO, b"", 0)


def test_v1_cannot_carry_json() -> None:
    with pytest.raises(ValueError, match="audio only"):
        encode_frame(1, b"{}", FrameType.JSON)


# ---- v2: 16-byte header -----------------------------------------------------------------


def test_v2_audio_header_bytes() -> None:
    frame = encode_frame(2, OPUS, FrameType.AUDIO, 0x01020304)
    assert (
        frame
        == (
            b"\x00\x02"  # u16 version
            b"\x00\x00"  # u16 type: audio
            b"\x00\x00\x00\x00"  # u32 reserved
            b"\x01\x02\x03\x04"  # u32 timestamp_ms
            b"\x00\x00\x00\x07"  # u32 payload_size
        )
        + OPUS
    )
    assert decode_frame(2, frame) == BinaryFrame(FrameType.AUDIO, OPUS, 0x01020304)


def test_v2_json_header_bytes() -> None:
    frame = encode_frame(2, b'{"a":1}', FrameType.JSON, 60)
    assert frame == (b'\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x3c\x00\x00\x00\x07{"a":1}')
    assert decode_frame(2, frame) == BinaryFrame(FrameType.JSON, b'{"a":1}', 60)


def test_v2_timestamp_wraps_to_32_bits() -> None:
    frame = encode_frame(2, b"", FrameType.AUDIO, (1 << 32) + 5)
    assert frame[8:12] == b"\x00\x00\x00\x05"
    assert decode_frame(2, frame) == BinaryFrame(FrameType.AUDIO, b"", 5)


def test_v2_default_timestamp_is_zero() -> None:
    assert encode_frame(2, b"x") == b"\x00\x02" + b"\x00" * 10 + b"\x00\x00\x00\x01x"


def test_v2_decode_ignores_reserved_field() -> None:
    frame = b"\x00\x02\x00\x00\xff\xff\xff\xff\x00\x00\x00\x09\x00\x00\x00\x02hi"
    assert decode_frame(2, frame) == BinaryFrame(FrameType.AUDIO, b"hi", 9)


def test_v2_decode_empty_payload() -> None:
    frame = b"\x00\x02\x00\x00" + b"\x00" * 12
    assert decode_frame(2, frame) == BinaryFrame(FrameType.AUDIO, b"", 0)


@pytest.mark.parametrize("length", range(16))
def test_v2_short_header(length: int) -> None:
    bad_frame(2, encode_frame(2, b"")[:length])


def test_v2_payload_size_larger_than_frame() -> None:
    frame = b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08" + OPUS
    bad_frame(2, frame)


def test_v2_payload_size_smaller_than_frame() -> None:
    frame = b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06" + OPUS
    bad_frame(2, frame)


@pytest.mark.parametrize("ftype", [b"\x00\x02", b"\x00\xff", b"\x01\x00"])
def test_v2_unknown_type(ftype: bytes) -> None:
    frame = b"\x00\x02" + ftype + b"\x00" * 8 + b"\x00\x00\x00\x01x"
    bad_frame(2, frame)


# ---- v3: 4-byte header ------------------------------------------------------------------


def test_v3_audio_header_bytes() -> None:
    frame = encode_frame(3, OPUS)
    assert frame == b"\x00\x00\x00\x07" + OPUS
    assert decode_frame(3, frame) == BinaryFrame(FrameType.AUDIO, OPUS, 0)


def test_v3_json_header_bytes() -> None:
    frame = encode_frame(3, b'{"a":1}', FrameType.JSON)
    assert frame == b'\x01\x00\x00\x07{"a":1}'
    assert decode_frame(3, frame) == BinaryFrame(FrameType.JSON, b'{"a":1}', 0)


def test_v3_has_no_timestamp() -> None:
    assert encode_frame(3, b"x", FrameType.AUDIO, 1234) == b"\x00\x00\x00\x01x"


def test_v3_largest_payload() -> None:
    payload = b"\xaa" * V3_MAX_PAYLOAD
    frame = encode_frame(3, payload)
    assert frame[:4] == b"\x00\x00\xff\xff"
    assert decode_frame(3, frame) == BinaryFrame(FrameType.AUDIO, payload, 0)


def test_v3_payload_too_large() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode_frame(3, b"\x00" * (V3_MAX_PAYLOAD + 1))


def test_v3_decode_ignores_reserved_field() -> None:
    assert decode_frame(3, b"\x01\x7f\x00\x02{}") == BinaryFrame(FrameType.JSON, b"{}", 0)


@pytest.mark.parametrize("length", range(4))
def test_v3_short_header(length: int) -> None:
    bad_frame(3, b"\x00\x00\x00\x00"[:length])


def test_v3_payload_size_larger_than_frame() -> None:
    bad_frame(3, b"\x00\x00\x00\x08" + OPUS)


def test_v3_payload_size_smaller_than_frame() -> None:
    bad_frame(3, b"\x00\x00\x00\x06" + OPUS)


@pytest.mark.parametrize("ftype", [2, 3, 255])
def test_v3_unknown_type(ftype: int) -> None:
    bad_frame(3, bytes([ftype]) + b"\x00\x00\x01x")


def test_bad_frame_error_names_its_code() -> None:
    assert str(bad_frame(3, b"\x00")).startswith("bad_frame: ")


# ---- round trips ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from([2, 3]),
    payload=st.binary(max_size=300),
    ftype=st.sampled_from(FrameType),
    timestamp=st.integers(0, 0xFFFFFFFF),
)
def test_round_trip(version: int, payload: bytes, ftype: FrameType, timestamp: int) -> None:
    frame = encode_frame(version, payload, ftype, timestamp)
    assert len(frame) == {2: 16, 3: 4}[version] + len(payload)
    expected_ts = timestamp if version == 2 else 0
    assert decode_frame(version, frame) == BinaryFrame(ftype, payload, expected_ts)


def test_split_v3_gives_each_audio_payload_in_order() -> None:
    stream = encode_frame(3, b"one") + encode_frame(3, b"") + encode_frame(3, b"three")
    assert split_v3(stream) == [b"one", b"", b"three"]
    assert split_v3(b"") == []


@pytest.mark.parametrize(
    ("stream", "where"),
    [
        (encode_frame(3, b"ab") + b"\x00\x00", "header cut short at byte 6"),
        (encode_frame(3, b"abc")[:-1], "payload cut short at byte 0"),
        (encode_frame(3, b"a") + encode_frame(3, b"{}", FrameType.JSON), "byte 5 is not audio"),
    ],
)
def test_split_v3_names_where_the_stream_breaks(stream: bytes, where: str) -> None:
    with pytest.raises(ProtocolError, match=where) as err:
        split_v3(stream)
    assert err.value.code is DeviceError.BAD_FRAME
