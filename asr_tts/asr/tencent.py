"""The "tencent" ASR provider: Tencent Cloud real-time speech recognition over WebSocket.

Followed: Tencent's "实时语音识别（websocket）" document (API 2.0) and its Python speech SDK.

- Handshake: `GET wss://asr.cloud.tencent.com/asr/v2/<appid>?<params>&signature=<sig>` with
  secretid, timestamp, expired (timestamp + 15 minutes here; the document allows under 90 days),
  nonce (a positive integer of at most 10 digits), engine_model_type (e.g. 16k_zh, 16k_en),
  voice_id (a fresh UUID per connection), voice_format 1 (PCM) and needvad 1; the signature is
  asr_tts/tencent_sign.py's HMAC-SHA1 over the URL without its scheme. The server then sends a
  text message: `{"code": 0, "message": "success", "voice_id"}`, or a non-zero code (4002 bad
  signature, 4006 concurrency over the limit, ...) and closes. open() waits for it, so a
  refused account fails at once and a server that does not answer fails within timeout_s.
- Audio: binary messages of 16 kHz s16le PCM. The document asks for 40 ms every 40 ms and
  refuses more than 3 s of audio within 1 s (code 4000); the relay feeds in real time (its
  pre-roll burst is well under a second), in packets of packet_ms.
- End: the text message `{"type": "end"}`. Results are text messages `{"code", "message",
  "voice_id", "message_id", "result": {"slice_type", "index", "voice_text_str", ...}}`;
  slice_type 2 is a sentence's stable text, `index` numbers the sentences (needvad may cut a
  long utterance in several); the last message has `"final": 1` and no result, and the server
  closes. The text returned is the sentences' latest texts in index order.
- Any message with a non-zero code is an ASRError carrying it: 4000 too fast, 4001 invalid
  parameter, 4002 authentication, 4003 service not opened, 4004 quota used up, 4005 account
  in arrears, 4006 concurrency limit, 4007 audio not decodable, 4008 no audio for 15 s, 4009
  client gone, 4010 unknown text message, 5000-5002 backend failure (retry), 6001 from abroad.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import aiohttp
import orjson
from yarl import URL

from asr_tts.asr.base import BYTES_PER_SECOND, ASRError, ASRStream
from asr_tts.asr.socket_stream import SocketStream
from asr_tts.errors import Reason, http_reason
from asr_tts.tencent_sign import asr_query, asr_sign_text, asr_signature

DEFAULT_URL = "wss://asr.cloud.tencent.com/asr/v2"
# The handshake needs the signature for a moment; a URL that leaks is worth less the sooner
# it expires (Tencent's SDK signs for a day).
SIGNATURE_LIFETIME_S = 15 * 60
_END = orjson.dumps({"type": "end"}).decode()
_MESSAGE_LIMIT = 200


def host_path(url: URL) -> str:
    """`url` without its scheme and query: what the handshake signature covers."""
    host = url.raw_host or ""
    return (host if url.is_default_port() else f"{host}:{url.port}") + url.raw_path


def join_sentences(texts: list[str]) -> str:
    """Sentences as one text: a space between two that would otherwise glue Latin words."""
    out = ""
    for text in texts:
        if out and text and out[-1].isascii() and text[0].isascii() and not out[-1].isspace():
            out += " "
        out += text
    return out


class TencentASR:
    """ASR provider named "tencent": one signed WebSocket per utterance."""

    name = "tencent"

    def __init__(
        self,
        *,
        appid: str,
        secret_id: str,
        secret_key: str,
        session: aiohttp.ClientSession,
        engine_model_type: str = "16k_zh",
        url: str = DEFAULT_URL,
        timeout_s: float = 10.0,
        packet_ms: int = 40,
    ) -> None:
        self._secret_id, self._secret_key = secret_id, secret_key
        self._session = session
        self._url = URL(url.rstrip("/")) / appid
        self._engine = engine_model_type
        self._timeout_s = timeout_s
        self._packet_bytes = BYTES_PER_SECOND * packet_ms // 1000

    def engine_for(self, language: str | None) -> str:
        """The engine for a device's language: English speakers get 16k_en, others the
        configured engine (Mandarin by default; 16k_zh_en and the large models do both)."""
        if language and language.lower().startswith("en"):
            return "16k_en"
        return self._engine

    def signed_url(self, language: str | None, now: int, nonce: int, voice_id: str) -> URL:
        """The handshake URL, signed."""
        params = {
            "secretid": self._secret_id,
            "timestamp": str(now),
            "expired": str(now + SIGNATURE_LIFETIME_S),
            "nonce": str(nonce),
            "engine_model_type": self.engine_for(language),
            "voice_id": voice_id,
            "voice_format": "1",
            "needvad": "1",
        }
        signature = asr_signature(self._secret_key, asr_sign_text(host_path(self._url), params))
        return URL(f"{self._url}?{asr_query(params, signature)}", encoded=True)

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Connect, and wait for the handshake answer; `language` picks the engine."""
        voice_id = str(uuid.uuid4())
        url = self.signed_url(language, int(time.time()), secrets.randbelow(10**9) + 1, voice_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                ws = await self._session.ws_connect(
                    url, timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s)
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise ASRError(
                f"Tencent refused the handshake: HTTP {exc.status}", reason=http_reason(exc.status)
            ) from exc
        except TimeoutError as exc:
            raise ASRError(
                f"no connection to Tencent within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            # Only a connector error's text, which names host and port: others may quote the
            # URL, whose signature opens a connection for 15 minutes.
            detail = f": {exc}" if isinstance(exc, aiohttp.ClientConnectorError) else ""
            raise ASRError(
                f"cannot connect to Tencent: {type(exc).__name__}{detail}", reason="connection"
            ) from exc
        try:
            await _handshake(ws, self._timeout_s)
        except BaseException:
            await ws.close()
            raise
        return _TencentStream(ws, self._timeout_s, self._packet_bytes)


async def _handshake(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> None:
    """Wait for the server's first message: code 0, or an ASRError with its code."""
    try:
        async with asyncio.timeout(timeout_s):
            msg = await ws.receive()
    except TimeoutError as exc:
        raise ASRError(
            f"no handshake answer from Tencent within {timeout_s} s", reason="timeout"
        ) from exc
    _check(_parse(msg))


def _parse(msg: aiohttp.WSMessage) -> dict[str, object]:
    """One server message as a JSON object, or ASRError."""
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise ASRError("Tencent closed the connection before the final result", reason="connection")
    if msg.type is aiohttp.WSMsgType.ERROR:
        raise ASRError(f"connection to Tencent lost: {msg.data}", reason="connection")
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise ASRError(f"unexpected {msg.type.name} message from Tencent", reason="bad_answer")
    try:
        doc = orjson.loads(msg.data)
    except orjson.JSONDecodeError as exc:
        raise ASRError("Tencent sent a message that is not JSON", reason="bad_answer") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("code"), int):
        raise ASRError("Tencent sent a message without an integer code", reason="bad_answer")
    return doc


def _check(doc: dict[str, object]) -> None:
    """ASRError when `doc` reports a failure."""
    if doc["code"] != 0:
        message = str(doc.get("message") or "")[:_MESSAGE_LIMIT]
        raise ASRError(f"Tencent error {doc['code']}: {message}", reason=code_reason(doc["code"]))


def code_reason(code: object) -> Reason:
    """The reason for a non-zero code (the list above): too fast, quota used up or
    concurrency over the limit are rate limits, 4002 the credentials."""
    if code in (4000, 4004, 4006):
        return "rate_limited"
    if code == 4002:
        return "auth"
    return "refused"


class _TencentStream(SocketStream):
    """One utterance on its own WebSocket; a reader task collects results until final."""

    vendor = "Tencent"

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float, packet_bytes: int
    ) -> None:
        super().__init__(ws, timeout_s, packet_bytes)
        self._sentences: dict[int, str] = {}
        self._start_reader()

    async def _send_rest(self) -> None:
        if self._pending:
            await self.send(self._take())
        await self.send(_END)

    async def _receive_final(self) -> str:
        """Read results until the message with final: 1."""
        while True:
            doc = _parse(await self._ws.receive())
            _check(doc)
            result = doc.get("result")
            if isinstance(result, dict):
                index, text = result.get("index", 0), result.get("voice_text_str")
                if isinstance(index, int) and isinstance(text, str):
                    self._sentences[index] = text
            if doc.get("final") == 1:
                return join_sentences([self._sentences[i] for i in sorted(self._sentences)])
