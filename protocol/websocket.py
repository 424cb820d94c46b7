"""The server side of RFC 6455 framing that the relay writes itself: a server's frames are
unmasked and the relay negotiates no extension (§5.2), so a frame is a 2-10 byte header and
the payload. Reading frames stays with aiohttp."""

from __future__ import annotations

import struct
from typing import Final

FIN_TEXT: Final = 0x81  # FIN + opcode 1 (RFC 6455 §5.2)
FIN_BINARY: Final = 0x82  # FIN + opcode 2
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
