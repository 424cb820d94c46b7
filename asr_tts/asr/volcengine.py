"""The "volcengine" ASR provider: Volcengine (火山引擎 / huoshan) streaming ASR v2.

Wire protocol of wss://openspeech.bytedance.com/api/v2/asr as Volcengine's public Python demo
(streaming_asr_demo.py, copied in many public repositories) implements it:

- Handshake: WebSocket GET with ``Authorization: Bearer; <token>`` (a semicolon after Bearer).
- Every message is one binary frame: a 4-byte header, then the body. Byte 0: protocol
  version (high nibble, 1) | header size in 4-byte words (1; extensions follow when more);
  byte 1: message type | message-type-specific flags; byte 2: serialization (0 none,
  1 JSON) | compression (0 none, 1 gzip); byte 3: reserved, 0.
- Client frames: header, payload size (u32 big-endian), payload. The full client request
  (type 0b0001, flags 0, JSON, gzip) is {app{appid, cluster, token}, user{uid},
  request{reqid, nbest, workflow, show_language, show_utterances, result_type, sequence: 1},
  audio{format: "raw", rate: 16000, bits: 16, channel: 1, codec: "raw", language}}. Then
  audio-only requests (type 0b0010, gzipped PCM), flags 0b0000, and 0b0010 ("negative
  sequence") on the last one. Byte 2 is 0x11 as in the demo, which builds every header with
  JSON serialization; the nibble means nothing for raw audio.
- Server frames: full server response (0b1001): header, payload size (u32), payload (JSON,
  gzip as byte 2 says) {reqid, code, message, sequence, result: [{text, confidence}],
  addition}; code 1000 is success; the final result has a negative sequence and, with
  result_type "full", result[0].text is the whole utterance. Ack (0b1011): sequence (i32)
  [, payload size, payload]. Error (0b1111): code (u32), payload size (u32), message.

Confirmed from public material: all of the above, and the shape of a final answer (the
demo's docstring records one). Not confirmed: what the non-1000 codes mean, so any code but
1000 is an ASRError carrying it; whether an empty last packet is accepted (the last packet
carries the audio not sent yet, which may be none).
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import uuid
from dataclasses import dataclass
from typing import Literal

import aiohttp
import orjson

from asr_tts.asr.base import BYTES_PER_SECOND, SAMPLE_RATE, ASRError, ASRStream
from asr_tts.asr.socket_stream import SocketStream
from asr_tts.errors import http_reason

DEFAULT_URL = "wss://openspeech.bytedance.com/api/v2/asr"
SUCCESS = 1000
WORKFLOW = "audio_in,resample,partition,vad,fe,decode,itn,nlu_punctuate"

FULL_CLIENT_REQUEST = 0b0001
AUDIO_ONLY_REQUEST = 0b0010
FULL_SERVER_RESPONSE = 0b1001
SERVER_ACK = 0b1011
SERVER_ERROR = 0b1111
FLAG_NONE = 0b0000
FLAG_LAST = 0b0010
JSON = 0b0001
GZIP = 0b0001
_VERSION_AND_SIZE = 0x11  # protocol version 1, header of one 4-byte word
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_MESSAGE_LIMIT = 200


class FrameError(ValueError):
    """A server frame that breaks the protocol."""


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """One decoded server frame."""

    kind: Literal["response", "ack", "error"]
    code: int
    sequence: int
    text: str = ""
    message: str = ""


def encode_client_message(message_type: int, flags: int, payload: bytes) -> bytes:
    """A client frame: header (JSON serialization, gzip), payload size, gzipped payload."""
    body = gzip.compress(payload, compresslevel=1)  # PCM barely compresses; keep it cheap
    header = bytes((_VERSION_AND_SIZE, message_type << 4 | flags, JSON << 4 | GZIP, 0))
    return header + _U32.pack(len(body)) + body


def _payload(data: bytes, offset: int, compression: int) -> bytes:
    """The u32-size-prefixed payload at `offset`, decompressed as byte 2 says."""
    if len(data) < offset + 4 or len(data) != offset + 4 + _U32.unpack_from(data, offset)[0]:
        raise FrameError("payload size does not match the frame")
    try:
        return gzip.decompress(data[offset + 4 :]) if compression == GZIP else data[offset + 4 :]
    except (OSError, EOFError) as exc:
        raise FrameError("bad gzip payload") from exc


def decode_server_message(data: bytes) -> ServerMessage:
    """Decode one server frame; raise FrameError when it is malformed."""
    if len(data) < 4 or data[0] >> 4 != 1 or not data[0] & 0x0F:
        raise FrameError("not a protocol version 1 frame")
    start = (data[0] & 0x0F) * 4
    if len(data) < start + 4:
        raise FrameError("frame too short")
    message_type, compression = data[1] >> 4, data[2] & 0x0F
    if message_type == SERVER_ACK:
        return ServerMessage("ack", SUCCESS, _I32.unpack_from(data, start)[0])
    if message_type == SERVER_ERROR:
        message = _payload(data, start + 4, compression).decode(errors="replace")
        return ServerMessage("error", _U32.unpack_from(data, start)[0], 0, message=message)
    if message_type != FULL_SERVER_RESPONSE:
        raise FrameError(f"unexpected message type {message_type:#06b}")
    try:
        body = orjson.loads(_payload(data, start, compression))
    except orjson.JSONDecodeError as exc:
        raise FrameError("response payload is not JSON") from exc
    if not isinstance(body, dict):
        raise FrameError("response payload is not a JSON object")
    code, sequence = body.get("code"), body.get("sequence", 0)
    if not isinstance(code, int) or not isinstance(sequence, int):
        raise FrameError("response without an integer code and sequence")
    result = body.get("result")
    first = result[0] if isinstance(result, list) and result else None
    text, note = first.get("text") if isinstance(first, dict) else None, body.get("message")
    text, note = (v if isinstance(v, str) else "" for v in (text, note))
    return ServerMessage("response", code, sequence, text=text, message=note)


class VolcengineASR:
    """ASR provider named "volcengine": streaming recognition over one WebSocket per utterance."""

    name = "volcengine"

    def __init__(
        self,
        *,
        appid: str,
        token: str,
        cluster: str,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        timeout_s: float = 10.0,
        uid: str = "voice-relay",
        packet_ms: int = 100,
    ) -> None:
        self._appid, self._token, self._cluster = appid, token, cluster
        self._session = session
        self._url = url
        self._timeout_s = timeout_s
        self._uid = uid
        # Volcengine recommends 100-200 ms of audio per packet; 0 sends every feed() at once.
        self._packet_bytes = BYTES_PER_SECOND * packet_ms // 1000

    def _request(self, language: str | None) -> bytes:
        """The full client request payload (JSON)."""
        audio = {"format": "raw", "rate": SAMPLE_RATE, "bits": 16, "channel": 1, "codec": "raw"}
        request = {
            "app": {"appid": self._appid, "cluster": self._cluster, "token": self._token},
            "user": {"uid": self._uid},
            "request": {
                "reqid": str(uuid.uuid4()),
                "nbest": 1,
                "workflow": WORKFLOW,
                "show_language": False,
                "show_utterances": False,
                "result_type": "full",  # the final result holds the whole utterance
                "sequence": 1,
            },
            "audio": audio | ({"language": language} if language else {}),
        }
        return orjson.dumps(request)

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Connect and send the full client request; `language` is e.g. "zh-CN" or "en-US"."""
        headers = {"Authorization": f"Bearer; {self._token}"}
        try:
            async with asyncio.timeout(self._timeout_s):
                ws = await self._session.ws_connect(
                    self._url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s),
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise ASRError(
                f"Volcengine refused the handshake: HTTP {exc.status}",
                reason=http_reason(exc.status),
            ) from exc
        except TimeoutError as exc:
            raise ASRError(
                f"no connection to Volcengine within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ASRError(
                f"cannot connect to Volcengine: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc
        stream = _VolcengineStream(ws, self._timeout_s, self._packet_bytes)
        try:
            await stream.send(
                encode_client_message(FULL_CLIENT_REQUEST, FLAG_NONE, self._request(language))
            )
        except BaseException:
            await stream.cancel()
            raise
        return stream


class _VolcengineStream(SocketStream):
    """One utterance on its own WebSocket; a reader task waits for the final result."""

    vendor = "Volcengine"

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float, packet_bytes: int
    ) -> None:
        super().__init__(ws, timeout_s, packet_bytes)
        self._start_reader()

    def _packet(self, audio: bytes) -> bytes:
        return encode_client_message(AUDIO_ONLY_REQUEST, FLAG_NONE, audio)

    async def _send_rest(self) -> None:
        # One last packet, empty or not: its flag ends the audio.
        await self.send(encode_client_message(AUDIO_ONLY_REQUEST, FLAG_LAST, self._take()))

    async def _receive_final(self) -> str:
        """Read server frames until the one with a negative sequence."""
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise ASRError(
                    f"unexpected {msg.type.name} message from Volcengine", reason="bad_answer"
                )
            try:
                reply = decode_server_message(msg.data)
            except FrameError as exc:
                raise ASRError(f"malformed Volcengine frame: {exc}", reason="bad_answer") from exc
            if reply.kind == "error" or reply.code != SUCCESS:
                # What the codes mean is not confirmed (see above): all are "refused".
                raise ASRError(
                    f"Volcengine error {reply.code}: {reply.message[:_MESSAGE_LIMIT]}",
                    reason="refused",
                )
            if reply.kind == "response" and reply.sequence < 0:
                return reply.text
        raise ASRError(
            "Volcengine closed the connection before the final result", reason="connection"
        )
