"""A fake OpenAI-compatible transcription server: it checks a request the way the real API
would (auth, multipart fields, a well-formed 16 kHz mono 16-bit WAV) and answers with the
documented success and error bodies."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import BodyPartReader, web

PATH = "/v1/audio/transcriptions"
Mode = Literal["ok", "error", "stall", "garbage"]


@dataclass(frozen=True)
class Transcription:
    """What one accepted request carried."""

    model: str
    language: str | None
    response_format: str
    filename: str
    content_type: str
    pcm: bytes


def error_body(message: str, kind: str, code: str | None) -> dict[str, object]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def check_wav(data: bytes) -> bytes:
    """The samples of a canonical 16 kHz mono 16-bit WAV; raise ValueError otherwise."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not RIFF/WAVE")
    if struct.unpack_from("<I", data, 4)[0] != len(data) - 8:
        raise ValueError("RIFF size does not match the file")
    tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", data, 20)
    if (tag, channels, rate, byte_rate, align, bits) != (1, 1, 16000, 32000, 2, 16):
        raise ValueError(f"fmt {tag}/{channels}/{rate}/{byte_rate}/{align}/{bits}")
    if data[36:40] != b"data" or struct.unpack_from("<I", data, 40)[0] != len(data) - 44:
        raise ValueError("data chunk size does not match the file")
    with wave.open(io.BytesIO(data)) as w:  # and the stdlib reads it the same way
        frames: bytes = w.readframes(w.getnframes())
    return frames


@dataclass
class FakeOpenAI:
    """Scriptable /v1/audio/transcriptions; records accepted requests and client hang-ups."""

    api_key: str = "sk-test-0123456789"
    text: str = "Turn on the light."
    mode: Mode = "ok"
    error_status: int = 500
    accepted: list[Transcription] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    hits: int = 0
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Check the request like the real API, then answer as `mode` says."""
        self.hits += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected.append("auth")
            # The real message quotes a masked key; quote the whole header to be sure it
            # never reaches an ASRError.
            message = f"Incorrect API key provided: {request.headers.get('Authorization')}"
            body = error_body(message, "invalid_request_error", "invalid_api_key")
            return web.json_response(body, status=401)
        try:
            job = await self.parse(request)
        except ValueError as exc:
            self.rejected.append(str(exc))
            body = error_body(str(exc), "invalid_request_error", None)
            return web.json_response(body, status=400)
        self.accepted.append(job)
        if self.mode == "stall":
            await self.wait_for_hang_up(request)
            return web.Response(status=204)
        if self.mode == "error":
            body = error_body("The server had an error.", "server_error", None)
            return web.json_response(body, status=self.error_status)
        if self.mode == "garbage":
            return web.Response(text="<html>gateway</html>", content_type="text/html")
        return web.json_response({"text": self.text})

    async def parse(self, request: web.Request) -> Transcription:
        """Read the multipart form; raise ValueError naming what is wrong."""
        if not request.content_type.startswith("multipart/form-data"):
            raise ValueError(f"content type {request.content_type}")
        fields: dict[str, str] = {}
        audio: tuple[str, str, bytes] | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise ValueError("nested or unnamed part")
            if part.name in fields or (part.name == "file" and audio is not None):
                raise ValueError(f"duplicate field {part.name}")
            if part.name == "file":
                ctype = part.headers.get("Content-Type", "")
                audio = (part.filename or "", ctype, bytes(await part.read()))
            else:
                fields[part.name] = await part.text()
        if audio is None or not audio[0].endswith(".wav"):
            raise ValueError("no .wav file part")
        unknown = set(fields) - {"model", "language", "response_format"}
        if unknown or not fields.get("model"):
            raise ValueError(f"bad fields {sorted(fields)}")
        if fields.get("response_format", "json") != "json":
            raise ValueError("response_format is not json")
        pcm = check_wav(audio[2])
        language = fields.get("language")
        if language is not None and (len(language) != 2 or not language.islower()):
            raise ValueError(f"language {language!r} is not ISO 639-1")
        return Transcription(
            fields["model"],
            language,
            fields.get("response_format", ""),
            audio[0],
            audio[1],
            pcm,
        )

    async def wait_for_hang_up(self, request: web.Request) -> None:
        """Hold the request until the client drops the connection (at most 10 s)."""
        try:
            for _ in range(1000):
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                await asyncio.sleep(0.01)
            else:
                return
        except asyncio.CancelledError:
            # aiohttp's TestServer cancels the handler when its client goes away.
            self.hung_up.set()
            raise
        self.hung_up.set()
