"""Reference business service: copy this file to start your own (stdlib + aiohttp + orjson only).

Contract (docs/protocol.md §2). The relay POSTs one JSON object per request to /chat (or /),
with `Authorization: Bearer <token>` when a token is configured:
  {"auth":{"device_id":"669C4BDA13EA"},"type":"chat",
   "details":{"msg":"<what the user said>","session_id":"S","timestamp":1640995200000}}
Other types ("report", "reset", "get") are device payloads passed through unchanged; they
carry their own `details` (events, battery_level, ...) and usually `details.session_id`.
The answer is `200 text/event-stream`; every event is one line `data: <json object>` plus a
blank line, flushed as soon as it is produced. Every event echoes `details.session_id` as a
top-level "session_id" (the relay drops events whose session_id does not match), and the
last event is {"event":"message_end","session_id":"S"}. Only event=message/type=chat is
spoken (its details.answer; optional tts_provider, voice_type, speed_ratio, pitch_ratio);
its optional details.emotion (happy, sad, thinking, ...) is shown on the device's screen
before the answer is spoken. Every other event (commands, data, errors) reaches the device
untouched as a custom message.
Who is asking: a pass-through body is the device's own text, so trust the relay's headers, not
the body's auth.device_id: X-Relay-Device-Id (the authenticated device) and X-Relay-Session-Id
(its connection). With a signing secret (the relay's `[[business]] signing_secret`) every
request must carry X-Relay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>; a missing or wrong one, or a t more than 5 minutes off, is answered 401.
Device tools (docs/protocol.md §3.3), for a relay `[[business]]` with `device_tools = true`:
a chat request then carries the device's MCP tools in `details.tools`. Asked "louder" / "大声一点"
(or "quieter" / "小声一点") by a device that has `self.audio_speaker.set_volume`, this service
answers with a `tool_call` event; the relay runs it on the device and POSTs a `tool_result`
request, answered here with a spoken sentence.
Run: python examples/business_service.py --port 8090 [--token T] [--signing-secret S]
(or env BUSINESS_TOKEN, BUSINESS_SIGNING_SECRET).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

Event = dict[str, Any]
log = logging.getLogger("business_service")

# Words in the user's message that trigger a device action (English matched case-insensitively).
KEYWORD_ACTIONS: tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...] = (
    (("dance", "跳舞"), "dance", {"duration": 5}),
    (("wag", "摇尾巴"), "wag_tail", {"duration": 3}),
)
# Phrases that change the volume of a device with the firmware's volume tool (§3.3), and the
# volume each sets (a model would first read self.get_device_status and go up from there).
VOLUME_TOOL = "self.audio_speaker.set_volume"
VOLUME_PHRASES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("louder", "turn it up", "大声一点", "大声点", "声音大一点"), 80),
    (("quieter", "turn it down", "小声一点", "小声点", "声音小一点"), 30),
)
DEMO_BATTERY_LEVEL = 85  # a real service would answer from its own records
SIGNATURE_MAX_SKEW_S = 300  # a signed request older (or newer) than this is refused

# details.emotion of a chat event (docs/protocol.md §2.2): the face on the device's screen, one of
# neutral, happy, laughing, funny, sad, angry, crying, loving, embarrassed, surprised, shocked,
# thinking, winking, cool, relaxed, delicious, kissy, confident, sleepy, silly, confused (the
# xiaozhi firmware's set; another word is passed to the device as it is).
GREETING = re.compile(
    r"\b(hello|hi|hey|good (morning|afternoon|evening))\b|你好|您好|嗨|早上好|晚上好"
)
QUESTION = re.compile(
    r"[?？]|^(what|how|why|when|where|who|can|could|is|are|do|does)\b|吗|什么|怎么"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """What `make_app` was configured with."""

    token: str | None
    chat_delay_s: float
    signing_secret: bytes | None = None


SETTINGS = web.AppKey("settings", Settings)


def is_chinese(text: str) -> bool:
    """True when the text contains CJK ideographs, so the answer should be in Chinese."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def emotion_of(msg: str) -> str:
    """The face the device shows while answering `msg`: happy for a greeting, thinking for a
    question, confused when nothing was heard, neutral otherwise."""
    if not msg:
        return "confused"
    lowered = msg.lower()
    if GREETING.search(lowered):
        return "happy"
    if QUESTION.search(lowered):
        return "thinking"
    return "neutral"


def volume_call(msg: str, tools: Any) -> Event | None:
    """A `tool_call` setting the volume, when `msg` asks for it and the device has the tool."""
    names = {t.get("name") for t in tools if isinstance(t, dict)} if isinstance(tools, list) else ()
    if VOLUME_TOOL not in names:
        return None
    lowered = msg.lower()
    for words, volume in VOLUME_PHRASES:
        if any(word in lowered for word in words):
            # The call id carries what this service needs to word the result.
            lang = "zh" if is_chinese(msg) else "en"
            details = {"call_id": f"volume-{volume}-{lang}", "name": VOLUME_TOOL}
            return {
                "event": "message",
                "type": "tool_call",
                "details": {**details, "arguments": {"volume": volume}},
            }
    return None


def chat_events(details: dict[str, Any]) -> Iterator[Event]:
    """Answer a chat message: spoken sentences, then a command if a keyword was heard; a
    volume phrase with the device's volume tool is a tool call instead."""
    msg = details.get("msg")
    msg = msg.strip() if isinstance(msg, str) else ""
    if (call := volume_call(msg, details.get("tools"))) is not None:
        yield call  # the answer is spoken once the relay posts the tool_result
        return
    if is_chinese(msg):
        sentences = [f"你刚才说：「{msg}」。", "我是示例业务服务，这句话会被合成为语音。"]
    elif msg:
        sentences = [f'You said: "{msg}".', "I am the reference business service speaking."]
    else:
        sentences = ["I did not catch that, could you say it again?"]
    # Several message/chat events are spoken in order as they arrive (docs/protocol.md §2.2). The
    # first carries the emotion: the device shows it as this answer starts.
    for n, sentence in enumerate(sentences):
        chat: dict[str, Any] = {"answer": sentence}
        if n == 0:
            chat["emotion"] = emotion_of(msg)
        yield {"event": "message", "type": "chat", "details": chat}
    lowered = msg.lower()
    actions = [
        {"action": action, "params": dict(params)}
        for words, action, params in KEYWORD_ACTIONS
        if any(word in lowered for word in words)
    ]
    if actions:
        yield {"event": "message", "type": "command", "details": {"actions": actions}}


def command(action: str, params: dict[str, Any]) -> Event:
    """A command event carrying one action, the shape the guide uses for reset and get."""
    actions = [{"action": action, "params": params}]
    return {"event": "message", "type": "command", "details": {"actions": actions}}


def report_events(details: dict[str, Any]) -> Iterator[Event]:
    """A report needs no answer beyond message_end; store details.events here if you care."""
    yield from ()


def reset_events(details: dict[str, Any]) -> Iterator[Event]:
    """Acknowledge a reset (details.type says what to reset, e.g. "count")."""
    yield command("reset_complete", {"status": "success"})


def get_events(details: dict[str, Any]) -> Iterator[Event]:
    """Answer a get request with the server time and a battery level."""
    now_ms = time.time_ns() // 1_000_000
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone()
    params = {
        "current_time": now.strftime("%Y-%m-%d %H:%M:%S"),  # the guide's format, local time
        "timestamp_ms": now_ms,
        "iso_time": now.isoformat(timespec="milliseconds"),
        "battery_level": DEMO_BATTERY_LEVEL,
    }
    yield command("data_response", params)


def tool_result_events(details: dict[str, Any]) -> Iterator[Event]:
    """Say what came of a tool call: the volume now set, or why the device did not do it."""
    error = details.get("error")
    call_id = details.get("call_id")
    call_id = call_id if isinstance(call_id, str) else ""
    if isinstance(error, dict):
        why = error.get("message") if isinstance(error.get("message"), str) else "unknown"
        answer = {"answer": f"The device could not do it: {why}.", "emotion": "sad"}
    elif call_id.startswith("volume-"):
        volume, _, lang = call_id.removeprefix("volume-").partition("-")
        said = (
            f"好的，音量已调到 {volume}。" if lang == "zh" else f"Done, the volume is now {volume}."
        )
        answer = {"answer": said, "emotion": "happy"}
    else:
        answer = {"answer": "Done."}
    yield {"event": "message", "type": "chat", "details": answer}


def mcp_notification_events(details: dict[str, Any]) -> Iterator[Event]:
    """A device's MCP notification (its state changed, ...): nothing to say."""
    yield from ()


HANDLERS = {
    "chat": chat_events,
    "report": report_events,
    "reset": reset_events,
    "get": get_events,
    "tool_result": tool_result_events,
    "mcp_notification": mcp_notification_events,
}


def json_error(status: int, message: str) -> web.Response:
    """A plain JSON error answer, used before the event stream starts."""
    return web.json_response({"error": message}, status=status)


def authorized(request: web.Request, token: str | None) -> bool:
    """Check `Authorization: Bearer <token>` in constant time; no token configured = open."""
    if token is None:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)


def relay_signed(secret: bytes, header: str, body: bytes, now: float | None = None) -> bool:
    """Whether `header` (X-Relay-Signature) signs `body`, the raw bytes received, with
    `secret`, at a time within SIGNATURE_MAX_SKEW_S of `now`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    t, v1 = fields.get("t", ""), fields.get("v1", "")
    now = time.time() if now is None else now
    if not (t.isascii() and t.isdigit()) or abs(now - int(t)) > SIGNATURE_MAX_SKEW_S:
        return False
    mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac.encode(), v1.encode("utf-8", "replace"))


async def handle(request: web.Request) -> web.StreamResponse:
    """POST /chat: validate the request, then stream the answer as Server-Sent Events."""
    settings = request.app[SETTINGS]
    if not authorized(request, settings.token):
        return json_error(401, "unauthorized")
    raw = await request.read()
    secret = settings.signing_secret
    if secret and not relay_signed(secret, request.headers.get("X-Relay-Signature", ""), raw):
        return json_error(401, "missing, wrong or expired X-Relay-Signature")
    # The device this request is for, as the relay vouches for it: use it (not the body's
    # auth.device_id, which a device can write as it likes) to look up your own records.
    device_id = urllib.parse.unquote(request.headers.get("X-Relay-Device-Id", ""))
    log.debug("request for device %r", device_id[:64])
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json_error(400, "body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return json_error(400, 'body must be a JSON object with a string "type"')
    details = body.get("details")
    details = details if isinstance(details, dict) else {}
    request_type: str = body["type"]

    handler = HANDLERS.get(request_type)
    if handler is not None:
        answer = handler(details)  # consumed lazily: each event is sent as soon as it is made
    else:
        message = f"unsupported request type {request_type[:40]!r}"
        answer = iter([{"event": "error", "details": {"code": "unknown_type", "message": message}}])
    events = itertools.chain(answer, [{"event": "message_end"}])
    delay = settings.chat_delay_s if request_type == "chat" else 0.0

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        for event in events:
            if delay > 0:
                await asyncio.sleep(delay)  # stands in for model latency before each event
            if "session_id" in details:
                # Echo on every event, right after "event" as in the guide (docs/protocol.md §2.3).
                event = {"event": event.pop("event"), "session_id": details["session_id"], **event}
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write_eof()
    except ConnectionError:
        # The relay closes the connection when it cancels a turn (the user interrupted, or
        # said something new): nobody reads the rest of this answer, and that is no error.
        log.info("client went away during a %r answer", request_type[:40])
    return response


def make_app(
    *, token: str | None = None, chat_delay_s: float = 0.0, signing_secret: str | None = None
) -> web.Application:
    """Build the service; `chat_delay_s` sleeps before each chat event (latency experiments),
    `signing_secret` makes every request need a valid X-Relay-Signature."""
    app = web.Application()
    secret = signing_secret.encode() if signing_secret else None
    app[SETTINGS] = Settings(token=token or None, chat_delay_s=chat_delay_s, signing_secret=secret)
    app.router.add_post("/chat", handle)
    app.router.add_post("/", handle)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the token and the signing secret default to the BUSINESS_TOKEN
    and BUSINESS_SIGNING_SECRET environment variables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", default=os.environ.get("BUSINESS_TOKEN"))
    parser.add_argument(
        "--signing-secret",
        default=os.environ.get("BUSINESS_SIGNING_SECRET"),
        help="the relay's [[business]] signing_secret: requests must carry X-Relay-Signature",
    )
    parser.add_argument("--chat-delay", type=float, default=0.0, help="seconds before each event")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the service until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = make_app(
        token=args.token, chat_delay_s=args.chat_delay, signing_secret=args.signing_secret
    )
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
