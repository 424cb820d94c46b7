"""What every cloud recogniser's utterance stream shares: one WebSocket per utterance, audio
buffered into packets, and a final result (or the first failure) that a reader task settles.
The vendors' streams (asr_tts.asr.volcengine, aliyun, tencent, dashscope) add their wire."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import aiohttp

from asr_tts.asr.base import ASRError


class SocketStream:
    """The send path and the failure rule of one utterance on its own WebSocket."""

    vendor: ClassVar[str]  # names the service in error messages

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> None:
        self._ws = ws
        self._timeout_s = timeout_s
        self._pending = bytearray()  # audio not yet sent: a packet is sent when it is full
        self._final: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def send(self, data: bytes | str) -> None:
        """Send audio or a message (text); a failed send reports the server's own error when
        it sent one before the connection went."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if isinstance(data, str):
                    await self._ws.send_str(data)
                else:
                    await self._ws.send_bytes(data)
        except TimeoutError as exc:
            raise ASRError(
                f"{self.vendor} took no data for {self._timeout_s} s", reason="timeout"
            ) from exc
        except (ConnectionError, aiohttp.ClientError) as exc:
            self._raise_if_failed()
            raise ASRError(
                f"connection to {self.vendor} lost: {type(exc).__name__}: {exc}",
                reason="connection",
            ) from exc

    def _take(self) -> bytes:
        """The pending audio, now to be sent."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def _raise_if_failed(self) -> None:
        """Raise the server's failure, once the reader has seen one."""
        final = self._final
        if final.done() and not final.cancelled() and (exc := final.exception()) is not None:
            raise exc
