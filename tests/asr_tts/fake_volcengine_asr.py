"""A fake Volcengine streaming ASR v2 server (wss://openspeech.bytedance.com/api/v2/asr).

It parses client frames with its own code, written from the protocol description (not with
the provider's codec), checks every header nibble, the payload sizes, the gzip payloads, the
full client request's fields, the auth header, and the flags of the audio packets (0 on each
but the last, 0b0010 on the last, nothing after it), and answers the way Volcengine's demo
shows: a full server response per packet, the final one with a negative sequence.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

PATH = "/api/v2/asr"
Mode = Literal[
    "ok", "empty", "deny", "server_error", "stall", "hang_up", "text", "garbage", "slow_handshake"
]
DENIED = 1002  # a response code other than 1000 (the fake's choice of number)
SERVER_FAILED = 1099  # carried by an error frame (type 0b1111)


@dataclass(frozen=True)
class ClientFrame:
    """One parsed client frame."""

    message_type: int
    flags: int
    serialization: int
    compression: int
    payload: bytes  # gunzipped


def parse_client_frame(data: bytes) -> ClientFrame:
    """Parse a client frame; raise ValueError for anything the protocol does not allow."""
    if len(data) < 8:
        raise ValueError("shorter than header + payload size")
    version, header_words = data[0] >> 4, data[0] & 0x0F
    if version != 1 or header_words != 1 or data[3] != 0:
        raise ValueError(f"header byte 0 {data[0]:#04x} / reserved {data[3]:#04x}")
    (size,) = struct.unpack(">I", data[4:8])
    if size != len(data) - 8:
        raise ValueError(f"payload size {size} but {len(data) - 8} bytes follow")
    compression = data[2] & 0x0F
    if compression != 1:
        raise ValueError(f"compression {compression}, expected gzip")
    return ClientFrame(
        data[1] >> 4, data[1] & 0x0F, data[2] >> 4, compression, gzip.decompress(data[8:])
    )


def server_frame(body: dict[str, Any]) -> bytes:
    """A full server response: header 0x11 0x90 0x11 0x00, size, gzipped JSON."""
    payload = gzip.compress(json.dumps(body).encode())
    return bytes((0x11, 0x90, 0x11, 0x00)) + struct.pack(">I", len(payload)) + payload


def error_frame(code: int, message: str) -> bytes:
    """An error frame: header 0x11 0xF0 0x10 0x00, code, size, JSON message (uncompressed)."""
    payload = json.dumps({"message": message}).encode()
    return bytes((0x11, 0xF0, 0x10, 0x00)) + struct.pack(">II", code, len(payload)) + payload


@dataclass
class FakeVolcengine:
    """Scriptable v2 ASR endpoint; records what the client sent and how it left."""

    appid: str = "app-7"
    token: str = "tok-very-secret"
    cluster: str = "volcengine_streaming_common"
    text: str = "打开客厅的灯。"
    mode: Mode = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    packets: list[tuple[int, int]] = field(default_factory=list)  # (flags, bytes) per packet
    audio: bytearray = field(default_factory=bytearray)
    problems: list[str] = field(default_factory=list)
    got_last: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        return app

    def check_request(self, req: dict[str, Any]) -> None:
        """Raise ValueError unless the full client request has the documented shape."""
        app, user, request, audio = req["app"], req["user"], req["request"], req["audio"]
        if (app["appid"], app["cluster"], app["token"]) != (self.appid, self.cluster, self.token):
            raise PermissionError("app fields do not match the account")
        if not isinstance(user["uid"], str) or not user["uid"]:
            raise ValueError("user.uid")
        if not isinstance(request["reqid"], str) or len(request["reqid"]) < 8:
            raise ValueError("request.reqid")
        if request["sequence"] != 1 or request["nbest"] != 1:
            raise ValueError("request.sequence / nbest")
        if not isinstance(request["workflow"], str) or "decode" not in request["workflow"]:
            raise ValueError("request.workflow")
        if request["result_type"] not in ("full", "single"):
            raise ValueError("request.result_type")
        wanted = {"format": "raw", "rate": 16000, "bits": 16, "channel": 1, "codec": "raw"}
        if {k: audio.get(k) for k in wanted} != wanted or set(audio) - {*wanted, "language"}:
            raise ValueError(f"audio {audio}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One recognition session."""
        if self.mode == "slow_handshake":
            await asyncio.sleep(10)
        if request.headers.get("Authorization") != f"Bearer; {self.token}":
            return web.Response(status=401, text="unauthorized")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await self.session(ws)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.problems.append(repr(exc))
            await ws.send_bytes(error_frame(1001, f"invalid request: {exc}"))
            await ws.close()
        return ws

    async def receive(self, ws: web.WebSocketResponse) -> ClientFrame | None:
        """The next client frame, or None once the client closed."""
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            self.closed.set()
            return None
        if msg.type is not WSMsgType.BINARY:
            raise ValueError(f"{msg.type.name} message")
        return parse_client_frame(msg.data)

    async def session(self, ws: web.WebSocketResponse) -> None:
        """Full client request, then audio packets until the last one."""
        first = await self.receive(ws)
        if first is None:
            return
        if (first.message_type, first.flags, first.serialization) != (0b0001, 0, 0b0001):
            raise ValueError(f"first frame {first}")
        req = json.loads(first.payload)
        self.requests.append(req)
        reqid = req["request"]["reqid"]
        try:
            self.check_request(req)
        except PermissionError:
            self.mode = "deny"
        if self.mode == "deny":
            await ws.send_bytes(
                server_frame({"reqid": reqid, "code": DENIED, "message": "access denied"})
            )
            await ws.close()
            return
        if self.mode == "text":
            await ws.send_str('{"code": 1000}')
        elif self.mode == "garbage":
            await ws.send_bytes(bytes((0x21, 0x90, 0x11, 0x00, 0, 0, 0, 0)))
        await ws.send_bytes(
            server_frame({"reqid": reqid, "code": 1000, "message": "Success", "sequence": 1})
        )
        await self.stream_audio(ws, reqid)

    async def stream_audio(self, ws: web.WebSocketResponse, reqid: str) -> None:
        """Take audio packets; answer each with a partial result, the last with the final."""
        seq, self.got_last = 1, False
        while (frame := await self.receive(ws)) is not None:
            if self.got_last:
                raise ValueError("a packet after the last one")
            if frame.message_type != 0b0010 or frame.flags not in (0, 0b0010):
                raise ValueError(f"audio frame type {frame.message_type} flags {frame.flags}")
            if frame.serialization not in (0, 1) or len(frame.payload) % 2:
                raise ValueError("audio serialization / odd length")
            self.packets.append((frame.flags, len(frame.payload)))
            self.audio += frame.payload
            seq += 1
            self.got_last = frame.flags == 0b0010
            if self.mode == "server_error":
                await ws.send_bytes(error_frame(SERVER_FAILED, "internal error"))
                await ws.close()
                return
            if self.mode == "hang_up":
                await ws.close()
                return
            if not self.got_last:
                partial = self.text[: len(self.audio) // 16000]
                await ws.send_bytes(
                    server_frame(
                        {
                            "reqid": reqid,
                            "code": 1000,
                            "message": "Success",
                            "sequence": seq,
                            "result": [{"text": partial, "confidence": 0}],
                        }
                    )
                )
            elif self.mode != "stall":
                text = "" if self.mode == "empty" else self.text
                duration = str(len(self.audio) // 32)
                await ws.send_bytes(
                    server_frame(
                        {
                            "reqid": reqid,
                            "code": 1000,
                            "message": "Success",
                            "sequence": -seq,
                            "result": [{"text": text, "confidence": 0}],
                            "addition": {"duration": duration},
                        }
                    )
                )
