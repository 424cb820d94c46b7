"""A fake Aliyun NLS: the POP CreateToken API, the real-time transcription WebSocket
(wss://nls-gateway.cn-shanghai.aliyuncs.com/ws/v1) and the RESTful synthesis
(https://nls-gateway.cn-shanghai.aliyuncs.com/stream/v1/tts), on one aiohttp app.

It checks what the client sends with its own code, written from Aliyun's documentation: the
CreateToken signature recomputed from the query (HMAC-SHA1 under `<secret>&`), the timestamp
and a nonce never seen before; the token on every gateway request; the StartTranscription
header (namespace, name, appkey, 32-hex message and task ids) and payload (pcm, 16000); audio
only after TranscriptionStarted, in whole samples; StopTranscription with the task's id and
nothing after it; the synthesis body's fields and documented ranges. It answers as the gateway
does: JSON events with header.status 20000000, TaskFailed with its status and status_text,
binary PCM with `Content-Type: audio/mpeg` from the RESTful synthesis, a JSON error otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import contextlib
import hashlib
import hmac
import json
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import WSMsgType, web

WS_PATH = "/ws/v1"
TTS_PATH = "/stream/v1/tts"
TOKEN_PATH = "/"
SUCCESS = 20000000
AUTH_FAILED = 40000001
CLIENT_ERROR = 40000000
TOO_MANY_REQUESTS = 40000005
SERVER_ERROR = 50000000
VOICES = {"xiaoyun", "xiaogang", "aixia", "zhiqi"}
Mode = Literal[
    "ok", "task_failed", "rate_limit", "drop", "slow_first", "stall", "token_down", "expired"
]
_HEX32 = re.compile(r"[0-9a-f]{32}")


def pop_encode(value: str) -> str:
    """Percent-encoding as the POP signature document states it (RFC 3986, upper-case hex)."""
    return quote(value.encode(), safe="").replace("%7E", "~")


def tone(seconds: float, rate: int) -> bytes:
    """A 440 Hz tone of `seconds` as s16le."""
    n = int(rate * seconds)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(n))
    )


@dataclass
class FakeNLS:
    """Scriptable NLS endpoints; records what the client sent."""

    access_key_id: str = "LTAI-test-id"
    access_key_secret: str = "secret-never-logged"
    appkey: str = "appkey-42"
    sentences: tuple[str, ...] = ("打开客厅的灯，", "然后关窗。")
    mode: Mode = "ok"
    token_ttl_s: float = 86400.0
    delay_s: float = 0.0  # slow_first: before TranscriptionStarted and before the first audio
    refuse_at_handshake: bool = False  # a bad token: HTTP 403 instead of TaskFailed after start
    tokens: dict[str, float] = field(default_factory=dict)  # issued token -> expire time
    nonces: set[str] = field(default_factory=set)
    token_requests: int = 0
    problems: list[str] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    stopped: bool = False
    sent_first: bool = False  # the first SentenceEnd went out while audio was streaming
    tts_bodies: list[dict[str, Any]] = field(default_factory=list)
    tts_hold: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: the rest waits
    tts_chunk: int = 3200  # synthesis: bytes a write (odd: a sample may straddle two)
    tts_hold_after: int = 0  # synthesis: bytes of audio sent before `tts_hold` applies
    tts_sent: bytearray = field(default_factory=bytearray)  # synthesis: audio sent
    tts_peer: asyncio.BaseTransport | None = None  # synthesis: the last answer's connection
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a transcription's socket

    def __post_init__(self) -> None:
        self.tts_hold.set()

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application()
        app.router.add_get(TOKEN_PATH, self.create_token)
        app.router.add_get(WS_PATH, self.transcribe)
        app.router.add_post(TTS_PATH, self.synthesize)
        return app

    def expire_all(self) -> None:
        """Every issued token is expired from now on (the client's cache does not know)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    # --- CreateToken -----------------------------------------------------------------------

    async def create_token(self, request: web.Request) -> web.Response:
        """The POP API: check the signed query, issue a token."""
        self.token_requests += 1
        query = dict(request.query)
        if self.mode == "token_down":
            return self.pop_error(503, "ServiceUnavailable", "The request has failed.")
        if query.get("AccessKeyId") != self.access_key_id:
            return self.pop_error(
                404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."
            )
        problem = self.query_problem(query)
        if problem:
            self.problems.append(problem)
            return self.pop_error(
                400,
                "SignatureDoesNotMatch" if "signature" in problem else "MissingParameter",
                problem,
            )
        token = uuid.uuid4().hex
        expire = int(time.time() + self.token_ttl_s)
        self.tokens[token] = expire
        body = {
            "RequestId": str(uuid.uuid4()),
            "NlsRequestId": uuid.uuid4().hex,
            "Token": {"Id": token, "ExpireTime": expire, "UserId": "1234567890"},
        }
        return web.json_response(body)

    def query_problem(self, query: dict[str, str]) -> str | None:
        """What is wrong with a CreateToken query, or None."""
        fixed = {
            "Action": "CreateToken",
            "Version": "2019-02-28",
            "Format": "JSON",
            "RegionId": "cn-shanghai",
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
        }
        wanted = {*fixed, "AccessKeyId", "Timestamp", "SignatureNonce", "Signature"}
        if set(query) != wanted:
            return f"parameters {sorted(query)}"
        if any(query[k] != v for k, v in fixed.items()):
            return "fixed parameters"
        stamp = calendar.timegm(time.strptime(query["Timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        if abs(stamp - time.time()) > 900:
            return "Timestamp more than 15 minutes off"
        if query["SignatureNonce"] in self.nonces:
            return "SignatureNonce used before"
        self.nonces.add(query["SignatureNonce"])
        signed = {k: v for k, v in query.items() if k != "Signature"}
        joined = "&".join(f"{pop_encode(k)}={pop_encode(signed[k])}" for k in sorted(signed))
        to_sign = "GET&%2F&" + pop_encode(joined)
        mac = hmac.new(f"{self.access_key_secret}&".encode(), to_sign.encode(), hashlib.sha1)
        if base64.b64encode(mac.digest()).decode() != query["Signature"]:
            return "signature does not match"
        return None

    @staticmethod
    def pop_error(status: int, code: str, message: str) -> web.Response:
        """A POP error answer."""
        body = {
            "RequestId": str(uuid.uuid4()),
            "HostId": "nls-meta.cn-shanghai.aliyuncs.com",
            "Code": code,
            "Message": message,
        }
        return web.json_response(body, status=status)

    def token_status(self, token: str | None) -> str | None:
        """Why the gateway refuses `token`, or None."""
        if not token or token not in self.tokens:
            return f"Gateway:ACCESS_DENIED:The token '{token}' is invalid!"
        if self.tokens[token] <= time.time() or self.mode == "expired":
            return f"Gateway:ACCESS_DENIED:The token '{token}' has expired!"
        return None

    # --- real-time transcription -----------------------------------------------------------

    async def transcribe(self, request: web.Request) -> web.StreamResponse:
        """One transcription task on its WebSocket."""
        token = request.headers.get("X-NLS-Token") or request.query.get("token")
        if self.refuse_at_handshake and (refused := self.token_status(token)):
            return web.json_response({"status": AUTH_FAILED, "message": refused}, status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await self.task(ws, token)
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(repr(exc))
            await ws.send_json(
                self.event(
                    "Default", "TaskFailed", "0" * 32, CLIENT_ERROR, f"Gateway:CLIENT_ERROR:{exc}"
                )
            )
        finally:
            await ws.close()
            self.closed.set()
        return ws

    @staticmethod
    def event(
        namespace: str,
        name: str,
        task_id: str,
        status: int = SUCCESS,
        text: str = "",
        **payload: Any,
    ) -> dict[str, Any]:
        """A gateway event."""
        header = {
            "namespace": namespace,
            "name": name,
            "status": status,
            "message_id": uuid.uuid4().hex,
            "task_id": task_id,
        }
        header["status_text" if status != SUCCESS else "status_message"] = (
            text or "GATEWAY|SUCCESS|Success."
        )
        return {"header": header, "payload": payload} if payload else {"header": header}

    async def task(self, ws: web.WebSocketResponse, token: str | None) -> None:
        """StartTranscription, audio, StopTranscription."""
        start = await self.directive(ws)
        if start is None:
            return
        header, payload = start["header"], start.get("payload", {})
        task_id = header["task_id"]
        refused = self.token_status(token)
        if refused:
            await ws.send_json(self.event("Default", "TaskFailed", task_id, AUTH_FAILED, refused))
            return
        self.check_start(header, payload)
        self.starts.append(start)
        self.audio.clear()  # what this task streams
        self.stopped = self.sent_first = False
        if self.mode == "rate_limit":
            await ws.send_json(
                self.event(
                    "Default",
                    "TaskFailed",
                    task_id,
                    TOO_MANY_REQUESTS,
                    "Gateway:TOO_MANY_REQUESTS:Too many requests!",
                )
            )
            return
        if self.mode == "slow_first":
            await asyncio.sleep(self.delay_s)
        await ws.send_json(
            self.event(
                "SpeechTranscriber", "TranscriptionStarted", task_id, session_id=uuid.uuid4().hex
            )
        )
        await self.audio_until_stop(ws, task_id)

    async def directive(self, ws: web.WebSocketResponse) -> dict[str, Any] | None:
        """The next text message as JSON, None once the client closed; audio is recorded."""
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None
            if msg.type is WSMsgType.TEXT:
                doc = json.loads(msg.data)
                if not isinstance(doc, dict):
                    raise ValueError("a directive that is not an object")
                return doc
            if not self.starts or self.stopped:
                raise ValueError("audio outside a started task")
            if len(msg.data) % 2:
                raise ValueError("audio in half samples")
            self.audio += msg.data
            await self.after_audio(ws)

    def check_start(self, header: dict[str, Any], payload: dict[str, Any]) -> None:
        """Raise ValueError unless StartTranscription has the documented shape."""
        expected = ("SpeechTranscriber", "StartTranscription", self.appkey)
        if (header["namespace"], header["name"], header["appkey"]) != expected:
            raise ValueError(f"start header {header}")
        if not _HEX32.fullmatch(header["message_id"]) or not _HEX32.fullmatch(header["task_id"]):
            raise ValueError("message_id / task_id must be 32 hex digits")
        if payload.get("format") != "pcm" or payload.get("sample_rate") != 16000:
            raise ValueError(f"audio format {payload}")

    async def after_audio(self, ws: web.WebSocketResponse) -> None:
        """Misbehave mid-stream, or emit the first sentence once a second of audio is in."""
        task_id = self.starts[-1]["header"]["task_id"]
        if self.mode == "drop" and len(self.audio) >= 6400:
            await ws.close()
            raise ConnectionResetError("dropped")
        if self.mode == "task_failed" and len(self.audio) >= 6400:
            await ws.send_json(
                self.event(
                    "Default", "TaskFailed", task_id, SERVER_ERROR, "SERVER_ERROR:internal error"
                )
            )
            await ws.close()
            raise ConnectionResetError("failed")
        await ws.send_json(
            self.event(
                "SpeechTranscriber",
                "TranscriptionResultChanged",
                task_id,
                index=1,
                time=len(self.audio) // 32,
                result=self.sentences[0][:2],
            )
        )
        if len(self.sentences) > 1 and len(self.audio) >= 32000 and not self.sent_first:
            self.sent_first = True
            await ws.send_json(self.sentence_end(task_id, 1))

    def sentence_end(self, task_id: str, index: int) -> dict[str, Any]:
        """SentenceEnd of sentence `index` (1-based)."""
        return self.event(
            "SpeechTranscriber",
            "SentenceEnd",
            task_id,
            index=index,
            time=len(self.audio) // 32,
            begin_time=0,
            result=self.sentences[index - 1],
            confidence=0.9,
        )

    async def audio_until_stop(self, ws: web.WebSocketResponse, task_id: str) -> None:
        """Audio until StopTranscription, then the last sentences and TranscriptionCompleted."""
        try:
            stop = await self.directive(ws)
        except ConnectionResetError:
            return
        if stop is None:
            return
        if stop["header"]["name"] != "StopTranscription" or stop["header"]["task_id"] != task_id:
            raise ValueError(f"expected StopTranscription of the task, got {stop['header']}")
        if (
            stop["header"]["appkey"] != self.appkey
            or stop["header"]["namespace"] != "SpeechTranscriber"
        ):
            raise ValueError("stop header")
        self.stopped = True
        if self.mode == "stall":
            await ws.receive()
            return
        first = 2 if self.sent_first else 1
        for index in range(first, len(self.sentences) + 1):
            await ws.send_json(self.sentence_end(task_id, index))
        await ws.send_json(self.event("SpeechTranscriber", "TranscriptionCompleted", task_id))
        msg = await ws.receive()  # the client closes; anything else is a protocol error
        if msg.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise ValueError(f"{msg.type.name} after the stop")

    # --- RESTful synthesis -----------------------------------------------------------------

    async def synthesize(self, request: web.Request) -> web.StreamResponse:
        """POST /stream/v1/tts: check the body, stream PCM back."""
        if request.content_type != "application/json":
            return self.tts_error(
                400, CLIENT_ERROR, "Gateway:CLIENT_ERROR:content type must be json"
            )
        body = await request.json()
        task_id = uuid.uuid4().hex
        refused = (
            self.token_status(body.get("token")) if isinstance(body, dict) else "not an object"
        )
        if refused:
            return self.tts_error(400, AUTH_FAILED, refused, task_id)
        problem = self.tts_problem(body)
        if problem:
            self.problems.append(problem)
            return self.tts_error(400, CLIENT_ERROR, f"Gateway:CLIENT_ERROR:{problem}", task_id)
        self.tts_bodies.append(body)
        text = body["text"][:300]  # the gateway truncates longer text without a word
        if self.mode == "rate_limit":
            return self.tts_error(
                429, TOO_MANY_REQUESTS, "Gateway:TOO_MANY_REQUESTS:Too many requests!", task_id
            )
        if self.mode == "task_failed":
            return self.tts_error(500, SERVER_ERROR, "SERVER_ERROR:internal error", task_id)
        return await self.stream_audio(request, tone(0.05 * len(text), body["sample_rate"]))

    async def stream_audio(self, request: web.Request, pcm: bytes) -> web.StreamResponse:
        """The audio in `tts_chunk`-byte chunks, as the gateway streams it; once `tts_hold_after`
        bytes are out, the rest waits for `tts_hold` (synthesis still under way)."""
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        self.tts_peer = request.transport
        if self.mode == "slow_first":
            await asyncio.sleep(self.delay_s)
        with contextlib.suppress(ConnectionResetError):  # the client left mid-audio
            await self.chunks(request, resp, pcm)
        return resp

    async def chunks(self, request: web.Request, resp: web.StreamResponse, pcm: bytes) -> None:
        """Write `pcm` chunk by chunk (misbehaving as the mode says), then the end."""
        size = self.tts_chunk
        for i in range(0, len(pcm), size):
            if self.mode == "drop" and i >= size:
                assert request.transport is not None
                request.transport.close()
                return
            if self.mode == "stall" and i >= size:
                await asyncio.sleep(30)
            await resp.write(pcm[i : i + size])
            self.tts_sent += pcm[i : i + size]
            if i < self.tts_hold_after <= i + size:
                await self.tts_hold.wait()
        await resp.write_eof()

    def tts_problem(self, body: Any) -> str | None:
        """What is wrong with a synthesis body, or None."""
        keys = {
            "appkey",
            "token",
            "text",
            "format",
            "sample_rate",
            "voice",
            "volume",
            "speech_rate",
            "pitch_rate",
        }
        if set(body) != keys:
            return f"fields {sorted(body)}"
        if body["appkey"] != self.appkey:
            return "appkey"
        if not isinstance(body["text"], str) or not body["text"].strip():
            return "text is required"
        if body["format"] != "pcm" or body["sample_rate"] not in (8000, 16000):
            return f"format {body['format']} {body['sample_rate']}"
        if body["voice"] not in VOICES:
            return f"voice {body['voice']}"
        if not 0 <= body["volume"] <= 100:
            return "volume"
        for key in ("speech_rate", "pitch_rate"):
            if not isinstance(body[key], int) or not -500 <= body[key] <= 500:
                return key
        return None

    @staticmethod
    def tts_error(status: int, code: int, message: str, task_id: str = "") -> web.Response:
        """The gateway's JSON error answer."""
        body = {"task_id": task_id, "result": "", "status": code, "message": message}
        return web.json_response(body, status=status)


def main() -> None:
    """Serve the fake on loopback for a benchmark (bench/nls.py):
    `python -m tests.asr_tts.fake_aliyun_nls --port P --access-key-id I --access-key-secret S
    --appkey K`."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--access-key-id", required=True)
    p.add_argument("--access-key-secret", required=True)
    p.add_argument("--appkey", required=True)
    args = p.parse_args()
    fake = FakeNLS(args.access_key_id, args.access_key_secret, args.appkey)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
