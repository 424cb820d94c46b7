"""A fake DashScope inference WebSocket (wss://dashscope.aliyuncs.com/api-ws/v1/inference)
running Paraformer real-time recognition and CosyVoice synthesis tasks.

Written from Model Studio's client-event and server-event references, not with the provider's
code: it checks the auth header, every run-task field (task group, task, function, model,
parameters, the audio format), that no input comes before task-started, that every event
names the task, that finish-task ends the input and nothing follows it; whatever breaks the
wire is recorded in `problems` and answered with task-failed InvalidParameter, as the service
does. It answers like the service: task-started, result-generated (partial and ended
sentences; sentence-begin / sentence-synthesis / sentence-end around binary audio),
task-finished, task-failed (a throttling code for the rate limit), and on demand a dropped
connection, a slow first result, or silence. It stamps when it received the end of the input
and when it answered, for bench/dashscope.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

PATH = "/api-ws/v1/inference"
ASR_MODELS = {"paraformer-realtime-v2", "paraformer-realtime-v1"}
TTS_MODELS = {"cosyvoice-v1", "cosyvoice-v2"}
VOICES = {"longxiaochun", "longwan", "longcheng"}
TTS_RATES = {8000, 16000, 22050, 24000, 44100, 48000}
SECONDS_PER_CHAR = 0.05
TTS_CHUNK = 4801  # odd on purpose: a 16-bit sample may straddle two binary frames
THROTTLED = ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later.")
Mode = Literal["ok", "empty", "throttle", "fail_mid", "drop", "stall", "slow_handshake"]
_TASK_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


class WireError(ValueError):
    """What the client sent breaks the documented wire."""


class Finished(Exception):  # noqa: N818 - control flow, not a failure
    """The session is over (the fake answered or hung up)."""


class Dropped(Finished):
    """The connection is cut mid-stream: no close frame, no event."""


def tone(seconds: float, rate: int) -> bytes:
    """A 440 Hz tone as s16le, distinct sample by sample."""
    n = int(rate * seconds)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(i * 440 * 2 * math.pi / rate)) for i in range(n))
    )


def event(name: str, task_id: str, output: dict[str, Any] | None = None, **header: str) -> str:
    """A server event as the documents show it."""
    payload: dict[str, Any] = {} if output is None else {"output": output}
    return json.dumps(
        {
            "header": {"task_id": task_id, "event": name, "attributes": {}, **header},
            "payload": payload,
        }
    )


def failed(task_id: str, code: str, message: str) -> str:
    """A task-failed event."""
    return event("task-failed", task_id, error_code=code, error_message=message)


@dataclass
class FakeDashScope:
    """Scriptable inference endpoint; records what clients sent and how they left."""

    api_key: str = "sk-fake-0123456789abcdef"
    text: str = "打开客厅的灯。"
    sentences: int = 1  # ended sentences the recognition result is cut into
    last_ended: bool = True  # False: the last sentence never gets sentence_end
    mode: Mode = "ok"
    start_delay_s: float = 0.0  # before task-started
    first_delay_s: float = 0.0  # before the first result (ASR) or the first audio (TTS)
    result_delay_s: float = 0.0  # ASR: from finish-task to the last sentence
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # TTS: cleared, the rest waits
    pace: float = 0.0  # TTS: seconds of synthesis per second of audio, between frames
    hold_after: int = 0  # TTS: bytes of audio sent before `hold` (and "drop") apply
    runs: list[dict[str, Any]] = field(default_factory=list)  # run-task events received
    texts: list[str] = field(default_factory=list)  # TTS: continue-task texts
    audio: bytearray = field(default_factory=bytearray)  # ASR: audio received
    sent_audio: bytearray = field(default_factory=bytearray)  # TTS: audio sent
    packets: list[int] = field(default_factory=list)  # ASR: bytes per binary frame
    problems: list[str] = field(default_factory=list)
    got_finish: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a client closed
    stamps: list[tuple[float, float]] = field(default_factory=list)  # (input ended, answered)

    def __post_init__(self) -> None:
        self.hold.set()

    def app(self) -> web.Application:
        """The aiohttp application serving the fake."""
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One connection, one task."""
        if self.mode == "slow_handshake":
            await asyncio.sleep(10)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(
                {"code": "InvalidApiKey", "message": "Invalid API-key provided."}, status=401
            )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        task_id = ""
        try:
            run = json.loads(await self.text_message(ws))
            task_id = str(run["header"]["task_id"])  # the failure names the task, as it can
            self.check_run(run)
            if run["payload"]["task"] == "asr":
                await self.recognise(ws, task_id)
            else:
                await self.speak(ws, task_id, run["payload"]["parameters"]["sample_rate"])
        except Dropped:
            if request.transport is not None:
                request.transport.abort()
            return ws
        except Finished:
            pass
        except ConnectionResetError:  # the client dropped the connection mid-stream
            self.closed.set()
        except (WireError, KeyError, TypeError, ValueError) as exc:
            self.problems.append(repr(exc))
            if not ws.closed:
                await ws.send_str(failed(task_id, "InvalidParameter", f"bad request: {exc}"))
        finally:
            await ws.close()
        return ws

    async def message(self, ws: web.WebSocketResponse) -> tuple[WSMsgType, Any]:
        """The next client message; Finished once the client closed."""
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            self.closed.set()
            raise Finished
        return msg.type, msg.data

    async def text_message(self, ws: web.WebSocketResponse) -> str:
        kind, data = await self.message(ws)
        if kind is not WSMsgType.TEXT:
            raise WireError(f"{kind.name} message where an event was due")
        return str(data)

    def check_run(self, run: dict[str, Any]) -> None:
        """WireError unless `run` is a well-formed run-task."""
        header, payload = run["header"], run["payload"]
        task_id = header["task_id"]
        if header["action"] != "run-task" or header["streaming"] != "duplex":
            raise WireError(f"header {header}")
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise WireError(f"task_id {task_id!r}")
        self.runs.append(run)
        if payload["task_group"] != "audio" or payload["input"] != {}:
            raise WireError("task_group / input")
        kind = (payload["task"], payload["function"])
        if kind == ("asr", "recognition") and payload["model"] in ASR_MODELS:
            self.check_asr(payload["parameters"])
        elif kind == ("tts", "SpeechSynthesizer") and payload["model"] in TTS_MODELS:
            self.check_tts(payload["parameters"])
        else:
            raise WireError(f"task {kind} with model {payload['model']!r}")

    @staticmethod
    def check_asr(params: dict[str, Any]) -> None:
        if (params["format"], params["sample_rate"]) != ("pcm", 16000):
            raise WireError(f"audio {params}")
        hints = params.get("language_hints", ["zh"])
        if set(params) - {"format", "sample_rate", "language_hints"} or not (
            isinstance(hints, list) and hints and all(h in ("zh", "en", "ja", "ko") for h in hints)
        ):
            raise WireError(f"parameters {params}")

    @staticmethod
    def check_tts(params: dict[str, Any]) -> None:
        if params["text_type"] != "PlainText" or params["voice"] not in VOICES:
            raise WireError(f"text_type / voice {params}")
        if params["format"] != "pcm" or params["sample_rate"] not in TTS_RATES:
            raise WireError(f"format {params}")
        volume, rate, pitch = params["volume"], params["rate"], params["pitch"]
        if not (isinstance(volume, int) and 0 <= volume <= 100):
            raise WireError(f"volume {volume}")
        if not all(isinstance(x, float | int) and 0.5 <= x <= 2.0 for x in (rate, pitch)):
            raise WireError(f"rate / pitch {rate} {pitch}")

    def check_event(self, data: str, task_id: str, action: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(data)
        header = doc["header"]
        if (header["action"], header["task_id"], header["streaming"]) != (
            action,
            task_id,
            "duplex",
        ):
            raise WireError(f"expected {action}, got {header}")
        return doc

    async def start(self, ws: web.WebSocketResponse, task_id: str) -> None:
        """task-started after `start_delay_s`, nothing from the client meanwhile; or the
        refusal of the rate limit (task-failed), which ends the session."""
        if self.mode == "throttle":
            await ws.send_str(failed(task_id, *THROTTLED))
            raise Finished
        if self.start_delay_s:
            await self.quiet(ws, asyncio.sleep(self.start_delay_s), "before task-started")
        await ws.send_str(event("task-started", task_id))

    async def recognise(self, ws: web.WebSocketResponse, task_id: str) -> None:
        """task-started, audio until finish-task, sentences, task-finished."""
        await self.start(ws, task_id)
        answered = 0
        while True:
            kind, data = await self.message(ws)
            if kind is WSMsgType.TEXT:
                self.check_event(data, task_id, "finish-task")
                break
            if kind is not WSMsgType.BINARY or len(data) % 2 or not data:
                raise WireError(f"audio frame {kind.name} of {len(data)} bytes")
            self.packets.append(len(data))
            self.audio += data
            answered = await self.partial(ws, task_id, answered)
        ended = time.monotonic()
        self.got_finish = True
        await self.final(ws, task_id, ended)

    async def partial(self, ws: web.WebSocketResponse, task_id: str, answered: int) -> int:
        """A partial result per 0.5 s of audio; misbehave mid-stream when told."""
        if len(self.audio) < (answered + 1) * 16000:
            return answered
        if self.mode == "drop":
            raise Dropped
        if self.mode == "fail_mid":
            await ws.send_str(failed(task_id, "InternalError", "internal server error"))
            raise Finished
        if answered == 0 and self.first_delay_s:
            await asyncio.sleep(self.first_delay_s)
        sentence = {
            "begin_time": 0,
            "end_time": None,
            "text": "" if self.mode == "empty" else self.text[: answered + 1],
            "sentence_end": False,
        }
        await ws.send_str(event("result-generated", task_id, {"sentence": sentence}))
        heartbeat = {"text": "", "heartbeat": True, "sentence_end": False}
        await ws.send_str(event("result-generated", task_id, {"sentence": heartbeat}))
        return answered + 1

    async def final(self, ws: web.WebSocketResponse, task_id: str, ended: float) -> None:
        """The ended sentences, then task-finished; nothing after finish-task is allowed."""
        if self.mode == "stall":
            await self.after_finish(ws)
        await asyncio.sleep(self.result_delay_s)
        text = "" if self.mode == "empty" else self.text
        cut = -(-len(text) // self.sentences)
        for i in range(0, len(text), cut or 1):
            sentence = {
                "begin_time": 0,
                "end_time": 1000,
                "text": text[i : i + cut],
                "sentence_end": self.last_ended or i + cut < len(text),
            }
            await ws.send_str(
                event("result-generated", task_id, {"sentence": sentence, "usage": {"duration": 1}})
            )
        await ws.send_str(event("task-finished", task_id))
        self.stamps.append((ended, time.monotonic()))
        await self.after_finish(ws)

    async def held(self, ws: web.WebSocketResponse) -> None:
        """Wait until `hold` is set; the client may only close meanwhile."""
        if not self.hold.is_set():
            await self.quiet(ws, self.hold.wait(), "after finish-task")

    async def quiet(self, ws: web.WebSocketResponse, until: Awaitable[object], when: str) -> None:
        """Wait for `until`; the client closing ends the session (Finished), a message from it
        is a WireError."""
        waited = asyncio.ensure_future(until)
        sent = asyncio.ensure_future(self.message(ws))
        await asyncio.wait({waited, sent}, return_when=asyncio.FIRST_COMPLETED)
        waited.cancel()
        if not sent.done():
            sent.cancel()
            await asyncio.wait({sent})  # its receive() is over before the next one starts
            return
        kind, _ = sent.result()
        raise WireError(f"a {kind.name} message {when}")

    async def after_finish(self, ws: web.WebSocketResponse) -> None:
        """Wait for the client to close; anything it sends is a problem."""
        kind, _ = await self.message(ws)
        raise WireError(f"a {kind.name} message after finish-task")

    async def speak(self, ws: web.WebSocketResponse, task_id: str, rate: int) -> None:
        """task-started, continue-task texts until finish-task, then the audio, task-finished."""
        await self.start(ws, task_id)
        texts: list[str] = []  # this task's
        while True:
            doc = json.loads(await self.text_message(ws))
            if doc["header"]["action"] == "finish-task":
                self.check_event(json.dumps(doc), task_id, "finish-task")
                break
            payload = self.check_event(json.dumps(doc), task_id, "continue-task")["payload"]
            text = payload["input"]["text"]
            if not isinstance(text, str) or not text:
                raise WireError("continue-task without text")
            texts.append(text)
            self.texts.append(text)
        self.got_finish = True
        if not texts:
            raise WireError("finish-task before any text")
        await self.synthesise(ws, task_id, "".join(texts), rate)

    async def synthesise(
        self, ws: web.WebSocketResponse, task_id: str, text: str, rate: int
    ) -> None:
        ended = time.monotonic()
        if self.mode == "stall":
            await self.after_finish(ws)
        if self.mode == "fail_mid":
            await ws.send_str(failed(task_id, "InternalError", "internal server error"))
            raise Finished
        await asyncio.sleep(self.first_delay_s)
        sentence = {"index": 0, "words": []}
        await ws.send_str(
            event("result-generated", task_id, {"type": "sentence-begin", "sentence": sentence})
        )
        pcm = b"" if self.mode == "empty" else tone(len(text) * SECONDS_PER_CHAR, rate)
        paused = False  # hold_after counts this task's audio
        for i in range(0, len(pcm), TTS_CHUNK):
            synth = {"type": "sentence-synthesis", "sentence": sentence}
            await ws.send_str(event("result-generated", task_id, synth))
            await ws.send_bytes(pcm[i : i + TTS_CHUNK])
            if i == 0:
                self.stamps.append((ended, time.monotonic()))
            self.sent_audio += pcm[i : i + TTS_CHUNK]
            if self.pace:  # synthesis takes time: the next audio is not there yet
                await asyncio.sleep(self.pace * TTS_CHUNK / 2 / rate)
            if not paused and i + TTS_CHUNK >= self.hold_after:
                paused = True
                await self.held(ws)
                if self.mode == "drop":
                    raise Dropped
        end = {"type": "sentence-end", "sentence": sentence, "original_text": text}
        await ws.send_str(
            event(
                "result-generated",
                task_id,
                end,
            )
        )
        await ws.send_str(event("task-finished", task_id))
        await self.after_finish(ws)
