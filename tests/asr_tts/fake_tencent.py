"""Fake Tencent Cloud speech endpoints: real-time ASR (WebSocket, API 2.0) and TextToVoice.

Both check what the client sends with their own code, written from Tencent's documents (not
with the provider's signing module): the ASR fake recomputes the handshake's HMAC-SHA1 over
"<Host><path>?<sorted params>" and checks every documented parameter, the binary PCM frames,
the 3-seconds-of-audio-a-second limit (code 4000) and the `{"type": "end"}` text message; the
TTS fake recomputes the TC3-HMAC-SHA256 signature from the request it received and checks the
X-TC-* headers and the body's fields and ranges. They answer as the documents show, including
their error replies (4002 bad signature, 4006 concurrency, 5000 backend; AuthFailure.*,
RequestLimitExceeded, InternalError), a connection dropped mid-stream and a slow first answer.
`timings` records each answer's own time (from the request or the end message to the answer
sent), which the benchmark subtracts.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import math
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import WSMsgType, web

APPID = "1259228442"
SECRET_ID = "AKIDfakeTencentSecretId0123456789"
SECRET_KEY = "fake-tencent-secret-key-0123456789"
ASR_PATH = f"/asr/v2/{APPID}"
ENGINES = {"16k_zh", "16k_en", "16k_zh_large", "16k_zh_en", "16k_yue", "8k_zh"}
AsrMode = Literal["ok", "empty", "two", "deny", "busy", "server_error", "drop", "stall", "slow"]
TtsMode = Literal[
    "ok",
    "busy",
    "error",
    "stall",
    "slow",
    "drop",
    "html",
    "bad_base64",
    "no_audio",
    "odd",
    "other_session",
]
VOICES = {101001, 101002, 1001}
SPEECH_BYTES_PER_S = 32000


def sha1_signature(text: str) -> str:
    """base64(HMAC-SHA1) of `text` under the fake account's key."""
    digest = hmac.new(SECRET_KEY.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def asr_message(voice_id: str, code: int = 0, message: str = "success", **extra: Any) -> str:
    """One server text message in the documented shape."""
    return json.dumps({"code": code, "message": message, "voice_id": voice_id, **extra})


@dataclass
class FakeTencentASR:
    """wss://asr.cloud.tencent.com/asr/v2/<appid> as the document describes it."""

    text: str = "打开客厅的灯。"
    mode: AsrMode = "ok"
    delay_s: float = 0.0  # mode "slow": before the handshake answer
    queries: list[dict[str, str]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    packets: list[int] = field(default_factory=list)  # bytes per binary message
    problems: list[str] = field(default_factory=list)
    got_end: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the client left
    timings: list[float] = field(default_factory=list)  # end message -> final message

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application()
        app.router.add_get(ASR_PATH, self.handle)
        return app

    def check_query(self, request: web.Request) -> str | None:  # noqa: C901 - one per rule
        """What is wrong with the handshake's query (4001), or "auth" (4002), or None."""
        query = dict(urllib.parse.parse_qsl(request.query_string, keep_blank_values=True))
        self.queries.append(query)
        required = {"secretid", "timestamp", "expired", "nonce", "engine_model_type", "voice_id"}
        if missing := required - set(query) - {"signature"}:
            return f"missing {sorted(missing)}"
        if "signature" not in query:
            return "auth"
        now, stamp, expired = time.time(), int(query["timestamp"]), int(query["expired"])
        if abs(now - stamp) > 300 or not stamp < expired < stamp + 90 * 86400:
            return "auth"
        if not query["nonce"].isdigit() or not 0 < int(query["nonce"]) < 10**10:
            return "nonce must be a positive integer of at most 10 digits"
        if query["engine_model_type"] not in ENGINES:
            return f"engine_model_type {query['engine_model_type']}"
        if query.get("voice_format") != "1" or not 0 < len(query["voice_id"]) <= 128:
            return "voice_format must be 1 (pcm) and voice_id at most 128 characters"
        params = {k: v for k, v in query.items() if k != "signature"}
        signed = f"{request.host}{request.path}?" + "&".join(
            f"{k}={params[k]}" for k in sorted(params)
        )
        if query["secretid"] != SECRET_ID or query["signature"] != sha1_signature(signed):
            return "auth"
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One recognition: handshake answer, audio, end, results."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        problem = self.check_query(request)
        voice_id = self.queries[-1].get("voice_id", "")
        try:
            if problem == "auth" or self.mode == "deny":
                await ws.send_str(asr_message(voice_id, 4002, "鉴权失败"))
            elif problem:
                self.problems.append(problem)
                await ws.send_str(asr_message(voice_id, 4001, f"参数不合法: {problem}"))
            elif self.mode == "busy":
                await ws.send_str(asr_message(voice_id, 4006, "账号当前调用并发超限"))
            else:
                await asyncio.sleep(self.delay_s if self.mode == "slow" else 0)
                await ws.send_str(asr_message(voice_id))
                await self.recognise(request, ws, voice_id)
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(repr(exc))
            await ws.send_str(asr_message(voice_id, 4010, f"unexpected: {exc}"))
        await ws.close()
        self.closed.set()
        return ws

    async def recognise(self, request: web.Request, ws: web.WebSocketResponse, vid: str) -> None:
        """Take binary audio until {"type": "end"}, answering like the document's examples."""
        started, received, index = time.monotonic(), 0, 0
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if json.loads(msg.data) != {"type": "end"}:
                    raise ValueError(f"text message {msg.data[:80]!r}")
                self.got_end = True
                await self.finish(ws, vid, time.monotonic(), received)
                return
            if msg.type is not WSMsgType.BINARY or len(msg.data) % 2:
                raise ValueError(f"{msg.type.name} message of {len(msg.data)} bytes")
            self.audio += msg.data
            self.packets.append(len(msg.data))
            received += len(msg.data)
            elapsed = time.monotonic() - started
            if received > SPEECH_BYTES_PER_S * 3 * max(1.0, math.ceil(elapsed)):
                await ws.send_str(asr_message(vid, 4000, "音频数据发送过多"))
                return
            if self.mode in ("server_error", "drop"):
                await self.fail(request, ws, vid)
                return
            if received // SPEECH_BYTES_PER_S > index:  # a partial result per second of audio
                index = received // SPEECH_BYTES_PER_S
                partial = self.text[:index]
                await ws.send_str(self.result(vid, 0 if index == 1 else 1, partial, received))

    async def fail(self, request: web.Request, ws: web.WebSocketResponse, vid: str) -> None:
        """Mid-stream: an error message (5000), or the connection cut without a word."""
        if self.mode == "server_error":
            await ws.send_str(asr_message(vid, 5000, "后台识别服务器识别失败"))
        elif request.transport is not None:
            request.transport.abort()

    async def finish(self, ws: web.WebSocketResponse, vid: str, t_end: float, size: int) -> None:
        """The stable result(s), then final: 1; nothing at all in mode "stall"."""
        if self.mode == "stall":
            await ws.receive()  # until the client gives up and closes
            return
        if self.mode == "two":
            await ws.send_str(self.result(vid, 2, "Turn on the light.", size, index=0))
            await ws.send_str(self.result(vid, 2, "Thanks", size, index=1))
        elif self.mode != "empty":
            await ws.send_str(self.result(vid, 2, self.text, size))
        self.timings.append(time.monotonic() - t_end)
        await ws.send_str(asr_message(vid, message_id=f"{vid}_241", final=1))

    @staticmethod
    def result(vid: str, slice_type: int, text: str, size: int, index: int = 0) -> str:
        """A recognition result message for the first `size` bytes of audio."""
        result = {
            "slice_type": slice_type,
            "index": index,
            "start_time": 0,
            "end_time": size // 32,
            "voice_text_str": text,
            "word_size": 0,
            "word_list": [],
        }
        return asr_message(vid, message_id=f"{vid}_{slice_type}_{index}", result=result)


def tc3_expected(request_headers: dict[str, str], body: bytes, host: str) -> tuple[str, str]:
    """(credential scope, signature) the fake computes for a request, from the document."""
    stamp = int(request_headers["x-tc-timestamp"])
    date = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d")
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{request_headers['content-type']}\nhost:{host}\n",
            "content-type;host",
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/tts/tc3_request"
    to_sign = f"TC3-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"TC3{SECRET_KEY}".encode()
    for part in (date, "tts", "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return scope, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def tts_error(code: str, message: str) -> web.Response:
    """An API 3.0 error answer (HTTP 200, as the service sends them)."""
    body = {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "r-1"}}
    return web.json_response(body)


@functools.cache
def sine(seconds: float, rate: int = 16000) -> bytes:
    """A loud 440 Hz tone as s16le."""
    n = int(seconds * rate)
    return b"".join(
        int(12000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True)
        for i in range(n)
    )


@dataclass
class FakeTencentTTS:
    """POST https://tts.tencentcloudapi.com/ (TextToVoice) as the documents describe it."""

    mode: TtsMode = "ok"
    delay_s: float = 0.0  # mode "slow": before the answer
    seconds_per_char: float = 0.02
    bodies: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    timings: list[float] = field(default_factory=list)  # request received -> answer ready

    def app(self) -> web.Application:
        """The fake as an aiohttp app."""
        app = web.Application()
        app.router.add_post("/", self.tts)
        return app

    def check_headers(self, request: web.Request, body: bytes) -> web.Response | None:
        """The signature and common parameters, checked as the service does."""
        h = {k.lower(): v for k, v in request.headers.items()}
        common = (h.get("x-tc-action"), h.get("x-tc-version"), h.get("x-tc-region"))
        if common != ("TextToVoice", "2019-08-23", "ap-guangzhou"):
            return tts_error("InvalidAction", f"action/version/region {common}")
        if h.get("content-type") != "application/json; charset=utf-8":
            return tts_error("InvalidParameter", "content-type")
        if abs(time.time() - int(h.get("x-tc-timestamp", "0"))) > 300:
            return tts_error("AuthFailure.SignatureExpire", "signature expired")
        scope, signature = tc3_expected(h, body, request.host)
        wanted = (
            f"TC3-HMAC-SHA256 Credential={SECRET_ID}/{scope}, "
            f"SignedHeaders=content-type;host, Signature={signature}"
        )
        if h.get("authorization") != wanted:
            message = "The provided credentials could not be validated."
            return tts_error("AuthFailure.SignatureFailure", message)
        return None

    @staticmethod
    def problem(body: Any) -> str | None:
        """What is wrong with a TextToVoice body, or None."""
        keys = {"Text", "SessionId", "VoiceType", "Codec", "SampleRate", "Speed", "Volume"}
        if not isinstance(body, dict) or not set(body) <= keys | {"ModelType", "PrimaryLanguage"}:
            return "unknown parameters"
        text, voice = body.get("Text"), body.get("VoiceType")
        if not isinstance(text, str) or not text or len(text) > 150:
            return "Text must hold 1 to 150 characters"
        if not isinstance(body.get("SessionId"), str) or not body["SessionId"]:
            return "SessionId is required"
        if not isinstance(voice, int) or voice not in VOICES:
            return "VoiceType"
        if body.get("Codec") != "pcm" or body.get("SampleRate") != 16000:
            return "Codec pcm at SampleRate 16000 expected"
        if not -2 <= body.get("Speed", 0) <= 6 or not -10 <= body.get("Volume", 0) <= 10:
            return "Speed or Volume out of range"
        return None

    async def tts(self, request: web.Request) -> web.StreamResponse:
        """Check the request like the real service would, then answer per `mode`."""
        received = time.monotonic()
        raw = await request.read()
        if (refused := self.check_headers(request, raw)) is not None:
            return refused
        body = json.loads(raw)
        if (problem := self.problem(body)) is not None:
            self.problems.append(problem)
            return tts_error("InvalidParameterValue", problem)
        self.bodies.append(body)
        return await self.reply(request, body, received)

    async def reply(
        self, request: web.Request, body: dict[str, Any], t0: float
    ) -> web.StreamResponse:
        """The answer for a valid request."""
        audio = base64.b64encode(sine(len(body["Text"]) * self.seconds_per_char)).decode()
        session = body["SessionId"]
        match self.mode:
            case "stall":
                await asyncio.sleep(10)
            case "slow":
                await asyncio.sleep(self.delay_s)
            case "busy":
                return tts_error("RequestLimitExceeded", "request limit exceeded")
            case "error":
                return tts_error("InternalError", "internal error")
            case "html":
                return web.Response(status=502, text="<html>502</html>", content_type="text/html")
            case "drop":
                return await self.drop(request)
            case "bad_base64":
                audio = "%%%" + audio
            case "no_audio":
                audio = ""
            case "odd":
                audio = base64.b64encode(b"\x01\x02\x03").decode()
            case "other_session":
                session = str(uuid.uuid4())
        answer = {"Response": {"Audio": audio, "SessionId": session, "RequestId": "r-2"}}
        data = json.dumps(answer).encode()
        self.timings.append(time.monotonic() - t0)
        return web.Response(body=data, content_type="application/json")

    @staticmethod
    async def drop(request: web.Request) -> web.StreamResponse:
        """Half an answer, then the connection cut."""
        resp = web.StreamResponse(headers={"Content-Length": "4096"})
        resp.content_type = "application/json"
        await resp.prepare(request)
        await resp.write(b'{"Response": {"Audio": "AAAA')
        if request.transport is not None:
            request.transport.abort()
        return resp
