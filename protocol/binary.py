"""Binary audio frames, protocol versions 1, 2 and 3 (docs/protocol.md §1.4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import DeviceError, ProtocolError

_V2 = struct.Struct(">HHIII")  # version, type, reserved, timestamp_ms, payload_size
_V3 = struct.Struct(">BBH")  # type, reserved, payload_size
V3_MAX_PAYLOAD = 0xFFFF


class FrameType(IntEnum):
    """What a v2/v3 frame carries."""

    AUDIO = 0
    JSON = 1


@dataclass(frozen=True, slots=True)
class BinaryFrame:
    """One decoded binary frame."""

    type: FrameType
    payload: bytes
    timestamp_ms: int = 0


def decode_frame(version: int, data: bytes) -> BinaryFrame:
    """Decode a binary WebSocket message for the negotiated protocol version."""
    if version == 2:
        if len(data) < _V2.size:
            raise ProtocolError(DeviceError.BAD_FRAME, "v2 frame shorter than its header")
        _ver, ftype, _reserved, ts, size = _V2.unpack_from(data)
        body = data[_V2.size :]
    elif version == 3:
        if len(data) < _V3.size:
            raise ProtocolError(DeviceError.BAD_FRAME, "v3 frame shorter than its header")
        ftype, _reserved, size = _V3.unpack_from(data)
        ts = 0
        body = data[_V3.size :]
    else:
        return BinaryFrame(FrameType.AUDIO, bytes(data))
    if size != len(body):
        raise ProtocolError(DeviceError.BAD_FRAME, "payload_size disagrees with frame length")
    if ftype not in (FrameType.AUDIO, FrameType.JSON):
        raise ProtocolError(DeviceError.BAD_FRAME, "unknown frame type")
    return BinaryFrame(FrameType(ftype), bytes(body), ts)


def encode_frame(
    version: int, payload: bytes, ftype: FrameType = FrameType.AUDIO, timestamp_ms: int = 0
) -> bytes:
    """Frame a payload for the device's protocol version."""
    if version == 2:
        return _V2.pack(2, ftype, 0, timestamp_ms & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        if len(payload) > V3_MAX_PAYLOAD:
            raise ValueError("payload too large for a v3 frame")
        return _V3.pack(ftype, 0, len(payload)) + payload
    if ftype is not FrameType.AUDIO:
        raise ValueError("protocol version 1 frames carry audio only")
    return payload


def split_v3(data: bytes) -> list[bytes]:
    """The audio payloads of protocol v3 frames written back to back (the Opus framing of
    `POST /api/v1/stt`, docs/integration.md §4): each frame's header gives its length."""
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _V3.size:
            raise ProtocolError(DeviceError.BAD_FRAME, f"v3 header cut short at byte {offset}")
        ftype, _reserved, size = _V3.unpack_from(data, offset)
        end = offset + _V3.size + size
        if end > len(data):
            raise ProtocolError(DeviceError.BAD_FRAME, f"v3 payload cut short at byte {offset}")
        if ftype != FrameType.AUDIO:
            raise ProtocolError(DeviceError.BAD_FRAME, f"frame at byte {offset} is not audio")
        payloads.append(bytes(data[offset + _V3.size : end]))
        offset = end
    return payloads
