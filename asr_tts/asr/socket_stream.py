"""What every cloud recogniser's utterance stream shares: one WebSocket per utterance, audio
sent in packets while the user speaks, the end of the audio, and a final result (or the first
failure) that a reader task settles. The vendors' streams (asr_tts.asr.volcengine, aliyun,
tencent, dashscope) add their wire: how a packet and the end are framed, and how the
server's messages become the final text."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import aiohttp

from aioutil import cancel_and_wait
from asr_tts.asr.base import ASRError


class SocketStream:
    """One utterance on its own WebSocket: an `ASRStream` once a subclass says how its
    vendor frames audio (`_packet`), ends it (`_send_rest`) and answers (`_receive_final`)."""

    vendor: ClassVar[str]  # names the service in error messages

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float, packet_bytes: int
    ) -> None:
        self._ws = ws
        self._timeout_s = timeout_s
        self._packet_bytes = packet_bytes  # audio is sent in packets of at least this size
        self._pending = bytearray()
        self._closed = False
        self._final: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None

    def _start_reader(self) -> None:
        """Read the server's messages from now on (owned: cancelled by `_close`)."""
        self._reader = asyncio.create_task(self._read())

    async def feed(self, pcm: bytes) -> None:
        """Send audio in packets of at least packet_bytes; raise ASRError once the server
        failed."""
        if self._closed:
            return
        self._raise_if_failed()
        self._pending += pcm
        if self._pending and len(self._pending) >= self._packet_bytes:
            await self.send(self._packet(self._take()))

    async def finish(self) -> str:
        """Send the rest and the end of the audio, wait for the final result; then close."""
        if self._closed:
            raise ASRError("the utterance is already finished or cancelled")
        self._closed = True
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send_rest()
                return await asyncio.shield(self._final)
        except TimeoutError as exc:
            raise ASRError(
                f"{self.vendor}: no final result within {self._timeout_s} s", reason="timeout"
            ) from exc
        finally:
            await self._close()

    async def cancel(self) -> None:
        """Close the connection without waiting for a result; idempotent."""
        self._closed = True
        await self._close()

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

    def _packet(self, audio: bytes) -> bytes | str:
        """One packet of audio as the vendor takes it (raw PCM unless a subclass frames it)."""
        return audio

    async def _send_rest(self) -> None:
        """Send the audio still pending, then the vendor's end of the audio."""
        raise NotImplementedError

    async def _receive_final(self) -> str:
        """Read the server's messages until the final text; ASRError on a failure."""
        raise NotImplementedError

    async def _read(self) -> None:
        """Settle `_final` with the final text or the first failure."""
        try:
            text = await self._receive_final()
        except ASRError as exc:
            if not self._final.done():
                self._final.set_exception(exc)
        else:
            if not self._final.done():
                self._final.set_result(text)

    def _futures(self) -> tuple[asyncio.Future[Any], ...]:
        """What the reader settles: ended with the stream."""
        return (self._final,)

    async def _close_socket(self) -> None:
        await self._ws.close()

    async def _close(self) -> None:
        """Stop the reader and close the WebSocket."""
        self._pending.clear()
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        for future in self._futures():
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: nobody else may ever look
        await self._close_socket()

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
