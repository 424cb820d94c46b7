"""Business wire: request bodies, answer events, routing and the device envelope (§2)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import orjson

from protocol import jsonutil
from protocol.errors import MESSAGES, BusinessError

MAX_EMOTION_CHARS = 32  # an emotion is one word of the firmware's set; longer is not one
DEVICE_ID_HEADER = "X-Relay-Device-Id"
SESSION_ID_HEADER = "X-Relay-Session-Id"
SIGNATURE_HEADER = "X-Relay-Signature"
# Visible ASCII but "%" stays as it is in an X-Relay-* value; the rest is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


@dataclass(frozen=True, slots=True)
class BusinessEvent:
    """One SSE event of a business answer: its JSON text, untouched, and the fields we route on."""

    raw: bytes
    event: str | None
    type: str | None
    session_id: str | None
    details: Any


@dataclass(frozen=True, slots=True)
class Speak:
    """A `message/chat` event: text to synthesise with the voice the business chose (§2.2)."""

    answer: str
    tts_provider: str | None = None
    voice_type: str | None = None
    speed_ratio: float | None = None
    pitch_ratio: float | None = None
    emotion: str | None = None  # shown on the device's screen as the answer plays (§2.2)


class BadEvent(ValueError):
    """An SSE event whose data is not a JSON object: skipped and counted (§2.6)."""


def chat_request(
    device_id: str, text: str, session_id: str, timestamp_ms: int, tools: bytes | None = None
) -> bytes:
    """Body of a chat request built from recognised or entered text (§2.1); `tools`, the
    device's tool list as a JSON array, goes in `details.tools` (§3.3)."""
    details: dict[str, Any] = {"msg": text, "session_id": session_id, "timestamp": timestamp_ms}
    if tools is not None:
        details["tools"] = orjson.Fragment(tools)
    return orjson.dumps({"auth": {"device_id": device_id}, "type": "chat", "details": details})


def mcp_notification_request(
    device_id: str, payload: bytes, session_id: str, timestamp_ms: int
) -> bytes:
    """A device's MCP notification for a business with device tools (§3.1), its payload
    as the device wrote it."""
    details = {
        "payload": orjson.Fragment(payload),
        "session_id": session_id,
        "timestamp": timestamp_ms,
    }
    return orjson.dumps(
        {"auth": {"device_id": device_id}, "type": "mcp_notification", "details": details}
    )


def tool_result_request(device_id: str, call: ToolCall, outcome: bytes, timestamp_ms: int) -> bytes:
    """What became of a `tool_call` (§3.3): `outcome`, a JSON object with `"result"` or
    `"error"` (and `"is_error"`), gives the members the details carry beside the call's id
    and name."""
    head = orjson.dumps({"call_id": call.call_id, "name": call.name})
    tail = orjson.dumps({"session_id": call.session_id, "timestamp": timestamp_ms})
    details = head[:-1] + b"," + outcome[1:-1] + b"," + tail[1:]
    auth = orjson.dumps({"device_id": device_id})
    return b'{"auth":%b,"type":"tool_result","details":%b}' % (auth, details)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A `tool_call` event (§3.3): the call's id, the tool's name and the arguments' text;
    `problem` says what is wrong with it (then it is not run)."""

    call_id: str
    name: str
    arguments: bytes
    session_id: str
    problem: str | None = None


def tool_call(event: BusinessEvent, session_id: str) -> ToolCall | None:
    """The tool call an event asks for, or None when it is not a `message/tool_call`."""
    if event.event != "message" or event.type != "tool_call":
        return None
    d = event.details if isinstance(event.details, dict) else {}
    call_id, name = d.get("call_id"), d.get("name")
    call = ToolCall(
        call_id if isinstance(call_id, str) else "",
        name if isinstance(name, str) else "",
        b"{}",
        session_id,
    )
    if not call.name:
        return replace(call, problem="unknown_tool")
    arguments = d.get("arguments", {})
    if not isinstance(arguments, dict):
        return replace(call, problem="bad_arguments")
    text = jsonutil.member_text(event.raw.decode(), "details") or "{}"
    raw = jsonutil.member_text(text, "arguments")
    return replace(call, arguments=raw.encode() if raw is not None else b"{}")


def relay_headers(
    device_id: str, session_id: str, body: bytes, *, secret: str, now: int
) -> dict[str, str]:
    """The headers the relay vouches for on every business request (§2.1, "who is asking"):
    the authenticated device and the connection's session, and with a `secret` a signature
    over `now` (Unix seconds) and the exact body bytes."""
    headers = {
        DEVICE_ID_HEADER: header_value(device_id),
        SESSION_ID_HEADER: header_value(session_id),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body, now)
    return headers


def header_value(text: str) -> str:
    """`text` as an HTTP header value: unchanged when it is visible ASCII without "%" (every
    MAC, UUID and session id), otherwise percent-encoded UTF-8 (`urllib.parse.unquote`)."""
    return quote(text, safe=_HEADER_SAFE)


def signature(secret: str, body: bytes, t: int) -> str:
    """`t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (§2.1); the secret as UTF-8."""
    mac = hmac.new(secret.encode(), b"%d.%s" % (t, body), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def parse_event(data: str) -> BusinessEvent:
    """Parse one SSE `data` field into a `BusinessEvent`; raise `BadEvent` when it is not JSON."""
    raw = data.strip().encode()
    try:
        obj = jsonutil.loads(raw)
    except ValueError as exc:
        raise BadEvent("event data is not JSON") from exc
    if not isinstance(obj, dict):
        raise BadEvent("event data is not a JSON object")
    sid = obj.get("session_id")
    return BusinessEvent(
        raw=raw,
        event=_str_or_none(obj.get("event")),
        type=_str_or_none(obj.get("type")),
        # A present but non-string id differs from every real one: "" (§2.3, dropped).
        session_id=sid if isinstance(sid, str) else (None if sid is None else ""),
        details=obj.get("details"),
    )


def session_ok(event: BusinessEvent, expected: str, *, lenient: bool) -> bool:
    """Whether an event may reach the device of session `expected` (§2.3)."""
    if event.session_id is None:
        return lenient
    return event.session_id == expected


def classify(event: BusinessEvent) -> Speak | None:
    """Routing rule (§2.2): `Speak` for a `message/chat` answer, None to pass it through."""
    if event.event != "message" or event.type != "chat" or not isinstance(event.details, dict):
        return None
    answer = event.details.get("answer")
    if not isinstance(answer, str):
        return None
    sp = speak_with_voice(answer, event.details)
    emotion = event.details.get("emotion")
    if isinstance(emotion, str) and 0 < len(emotion.strip()) <= MAX_EMOTION_CHARS:
        return replace(sp, emotion=emotion.strip())
    return sp


def speak_with_voice(answer: str, voice: dict[str, Any]) -> Speak:
    """`answer` with the voice fields of a chat event's details (or a push's `voice`)."""
    return Speak(
        answer=answer,
        tts_provider=_str_or_none(voice.get("tts_provider")),
        voice_type=_str_or_none(voice.get("voice_type")),
        speed_ratio=_ratio(voice.get("speed_ratio")),
        pitch_ratio=_ratio(voice.get("pitch_ratio")),
    )


def is_end(event: BusinessEvent) -> bool:
    """`message_end` ends the request (§2.2)."""
    return event.event == "message_end"


def envelope(session_id: str, request_type: str, event_raw: bytes, timestamp_ms: int) -> bytes:
    """The device message carrying one passed-through event (§2.4), the event bytes untouched."""
    return b"".join(
        (
            b'{"session_id":',
            orjson.dumps(session_id),
            b',"type":"custom","payload":{"source":"business_service","original_request_type":',
            orjson.dumps(request_type),
            b',"business_response":',
            event_raw,
            b',"timestamp":',
            str(int(timestamp_ms)).encode(),
            b"}}",
        )
    )


def error_event(session_id: str, code: BusinessError) -> bytes:
    """The error event (§2.6) a device receives, in the shape a business would send it."""
    return orjson.dumps(
        {
            "event": "error",
            "session_id": session_id,
            "details": {"code": str(code), "message": MESSAGES[code]},
        }
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ratio(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.1 <= value <= 10.0 else None
