"""The "aliyun" ASR provider: Aliyun NLS (智能语音交互) real-time speech transcription.

Followed: Aliyun's "real-time speech recognition" WebSocket protocol page
(wss://nls-gateway.cn-shanghai.aliyuncs.com/ws/v1). One WebSocket per utterance:

- Handshake: the token (asr_tts/nls_token.py) in the `X-NLS-Token` header.
- Text frames, JSON `{"header": {...}, "payload": {...}}`. The client's header holds
  message_id (32 hex digits, new per message), task_id (32 hex digits, one per task),
  namespace `SpeechTranscriber`, name and appkey. `StartTranscription` with payload
  {format: "pcm", sample_rate: 16000, enable_intermediate_result, enable_punctuation_prediction,
  enable_inverse_text_normalization}; the server answers `TranscriptionStarted`, and only then
  is audio sent: binary frames of raw PCM (the page recommends 100 ms per frame);
  `StopTranscription` (header only) ends the audio.
- Server events carry header.status (20000000 is success) and name: `SentenceBegin`,
  `TranscriptionResultChanged` (intermediate), `SentenceEnd` (payload.result is a finished
  sentence; an utterance may hold several), `TranscriptionCompleted` (after the stop: every
  sentence is out), `TaskFailed` (header.status and status_text say why; the connection closes).

The text of an utterance is its SentenceEnd results joined. A TaskFailed with status 40000001
(the token is invalid or expired) at the start, or a handshake refused with HTTP 401 or 403,
drops the cached token and starts again once with a fresh one; every other failure is an
ASRError naming the status (40000005 is the gateway's "too many requests"), the token redacted
from the text.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson

from asr_tts.asr.base import BYTES_PER_SECOND, SAMPLE_RATE, ASRError, ASRStream
from asr_tts.asr.socket_stream import SocketStream
from asr_tts.errors import http_reason
from asr_tts.nls_token import TOKEN_REJECTED, NLSTokens, TokenError, nls_reason

DEFAULT_URL = "wss://nls-gateway.cn-shanghai.aliyuncs.com/ws/v1"
NAMESPACE = "SpeechTranscriber"
SUCCESS = 20000000
_MESSAGE_LIMIT = 200


class TaskFailed(ASRError):
    """The gateway's TaskFailed event (or another event with a failure status)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(
            f"Aliyun NLS error {status}: {text[:_MESSAGE_LIMIT]}", reason=nls_reason(status)
        )
        self.token_refused = status == TOKEN_REJECTED


class HandshakeRefused(ASRError):
    """The gateway answered the WebSocket handshake with an HTTP error; 401 and 403 are taken
    as a refused token (the page documents the refusal as TaskFailed 40000001 after the start,
    this covers a gateway that refuses earlier)."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"Aliyun NLS refused the handshake: HTTP {status}", reason=http_reason(status)
        )
        self.token_refused = status in (401, 403)


def _event(data: str, token: str) -> tuple[str, dict[str, Any]]:
    """An event's name and payload; TaskFailed, or ASRError when it is off the protocol."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ASRError(
            "Aliyun NLS sent a text frame that is not JSON", reason="bad_answer"
        ) from exc
    header = doc.get("header") if isinstance(doc, dict) else None
    if not isinstance(header, dict) or not isinstance(header.get("name"), str):
        raise ASRError("Aliyun NLS sent an event without a header name", reason="bad_answer")
    status = header.get("status")
    if header["name"] == "TaskFailed" or status != SUCCESS:
        text = str(header.get("status_text") or header.get("status_message") or "")
        raise TaskFailed(status if isinstance(status, int) else 0, text.replace(token, "***"))
    payload = doc.get("payload")
    return header["name"], payload if isinstance(payload, dict) else {}


class AliyunASR:
    """ASR provider named "aliyun": NLS real-time transcription, one WebSocket per utterance."""

    name = "aliyun"

    def __init__(
        self,
        *,
        appkey: str,
        tokens: NLSTokens,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        timeout_s: float = 10.0,
        packet_ms: int = 100,
    ) -> None:
        self._appkey = appkey
        self._tokens = tokens
        self._session = session
        self._url = url
        self._timeout_s = timeout_s
        self._packet_bytes = BYTES_PER_SECOND * packet_ms // 1000

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Start a transcription task; the language is the appkey's (set in Aliyun's console)."""
        del language  # an NLS project (its appkey) has one language model
        try:
            async with asyncio.timeout(self._timeout_s):
                try:
                    return await self._start()
                except (TaskFailed, HandshakeRefused) as exc:
                    if not exc.token_refused:
                        raise
                return await self._start()  # once more, with the token fetched again
        except TimeoutError as exc:
            raise ASRError(
                f"Aliyun NLS did not start within {self._timeout_s} s", reason="timeout"
            ) from exc

    async def _start(self) -> _AliyunStream:
        """Connect with the current token and start the task; TaskFailed drops the token."""
        try:
            token = await self._tokens.get()
        except TokenError as exc:
            raise ASRError(f"no Aliyun NLS token: {exc}", reason=exc.reason) from exc
        try:
            ws = await self._session.ws_connect(
                self._url,
                headers={"X-NLS-Token": token},
                timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s),
            )
        except aiohttp.WSServerHandshakeError as exc:
            refused = HandshakeRefused(exc.status)
            if refused.token_refused:
                self._tokens.invalidate(token)
            raise refused from exc
        except aiohttp.ClientError as exc:
            raise ASRError(
                f"cannot connect to Aliyun NLS: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc
        stream = _AliyunStream(ws, self._appkey, token, self._timeout_s, self._packet_bytes)
        try:
            await stream.start()
        except TaskFailed as exc:
            if exc.token_refused:
                self._tokens.invalidate(token)
            await stream.cancel()
            raise
        except BaseException:
            await stream.cancel()
            raise
        return stream


class _AliyunStream(SocketStream):
    """One transcription task; after the start, a reader task collects the sentences."""

    vendor = "Aliyun NLS"

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        appkey: str,
        token: str,
        timeout_s: float,
        packet_bytes: int,
    ) -> None:
        super().__init__(ws, timeout_s, packet_bytes)
        self._appkey = appkey
        self._token = token
        self._task_id = uuid.uuid4().hex

    async def _send_rest(self) -> None:
        if self._pending:
            await self.send(self._take())
        await self.send(self._directive("StopTranscription"))

    def _directive(self, name: str, payload: dict[str, object] | None = None) -> str:
        """A client message of this task."""
        header = {
            "message_id": uuid.uuid4().hex,
            "task_id": self._task_id,
            "namespace": NAMESPACE,
            "name": name,
            "appkey": self._appkey,
        }
        doc = {"header": header} | ({"payload": payload} if payload else {})
        return orjson.dumps(doc).decode()

    async def start(self) -> None:
        """Send StartTranscription and wait for TranscriptionStarted (audio may follow)."""
        payload: dict[str, object] = {
            "format": "pcm",
            "sample_rate": SAMPLE_RATE,
            "enable_intermediate_result": False,  # only finished sentences are used
            "enable_punctuation_prediction": True,
            "enable_inverse_text_normalization": True,
        }
        await self.send(self._directive("StartTranscription", payload))
        msg = await self._ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ASRError(
                f"Aliyun NLS answered the start with {msg.type.name}", reason="bad_answer"
            )
        name, _ = _event(msg.data, self._token)
        if name != "TranscriptionStarted":
            raise ASRError(f"Aliyun NLS answered the start with {name}", reason="bad_answer")
        self._start_reader()

    async def _receive_final(self) -> str:
        """Read events until TranscriptionCompleted; the SentenceEnd results joined."""
        sentences: list[str] = []
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ASRError(
                    f"unexpected {msg.type.name} message from Aliyun NLS", reason="bad_answer"
                )
            name, payload = _event(msg.data, self._token)
            if name == "SentenceEnd":
                result = payload.get("result")
                sentences.append(result if isinstance(result, str) else "")
            elif name == "TranscriptionCompleted":
                return "".join(sentences)
        raise ASRError(
            "Aliyun NLS closed the connection before TranscriptionCompleted", reason="connection"
        )
