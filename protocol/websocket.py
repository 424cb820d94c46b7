"""The server side of RFC 6455 framing that the relay writes itself: a server's frames are
unmasked and the relay negotiates no extension (§5.2), so a frame is a 2-10 byte header and
the payload. Reading frames stays with aiohttp; `MaskCheck` only walks the client's frame
headers, because aiohttp accepts the unmasked client frames that §5.1 forbids."""

from __future__ import annotations

import struct
from typing import Final

FIN_TEXT: Final = 0x81  # FIN + opcode 1 (RFC 6455 §5.2)
FIN_BINARY: Final = 0x82  # FIN + opcode 2
FIN_CLOSE: Final = 0x88  # FIN + opcode 8
_LEN7 = struct.Struct("!BB")
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame(first: int, payload: bytes) -> bytes:
    """One whole unmasked frame: `first` is the FIN bit and opcode (FIN_TEXT, FIN_BINARY)."""
    size = len(payload)
    if size < 126:
        return _LEN7.pack(first, size) + payload
    if size < 65536:
        return _LEN16.pack(first, 126, size) + payload
    return _LEN64.pack(first, 127, size) + payload


def close_frame(code: int) -> bytes:
    """A close frame carrying `code` and no reason (§5.5.1)."""
    return frame(FIN_CLOSE, code.to_bytes(2, "big"))


class MaskCheck:
    """Walks the frame headers of a client's byte stream, fed in any pieces, and tells when a
    frame arrives without the mask bit: a server must then close with 1002 (§5.1)."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # the start of a header split across pieces
        self._skip = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> bool:
        """Take the next bytes of the stream; False once an unmasked frame has begun."""
        if self._head:
            data = self._head + data
            self._head = b""
        pos, end = 0, len(data)
        while True:
            pos += self._skip
            if pos > end:  # the payload goes on in a later piece
                self._skip = pos - end
                return True
            self._skip = 0
            if end - pos < 2:
                self._head = data[pos:]
                return True
            second = data[pos + 1]
            if not second & 0x80:
                return False
            size = second & 0x7F
            extra = 2 if size == 126 else 8 if size == 127 else 0
            if end - pos < 6 + extra:
                self._head = data[pos:]
                return True
            if extra:
                size = int.from_bytes(data[pos + 2 : pos + 2 + extra], "big")
            pos += 6 + extra
            self._skip = size
