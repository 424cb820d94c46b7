"""Device-native messages a business may push through the HTTP API (docs/protocol.md §1.5,
§4): which types, the string fields the firmware needs to act on each, and the message the
device receives, with the relay's session id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import orjson

from protocol import jsonutil

PushType = Literal["llm", "alert", "system", "notify"]
PUSH_TYPES: tuple[PushType, ...] = get_args(PushType)

# The firmware ignores a message without these, each a string (78/xiaozhi-esp32
# main/application.cc): `llm` sets the screen's emoji, `alert` shows a status line with a
# message and an emoji, `system` runs a command (`reboot`), `notify` says the device's
# configuration changed.
_REQUIRED: dict[PushType, tuple[str, ...]] = {
    "llm": ("emotion",),
    "alert": ("status", "message", "emotion"),
    "system": ("command",),
    "notify": ("event",),
}
NOTIFY_EVENTS = ("config_updated",)  # the only one a hello can declare (§1.2 features.notify)
EXAMPLES: dict[PushType, str] = {
    "llm": '{"device":{"type":"llm","emotion":"happy"}}',
    "alert": '{"device":{"type":"alert","status":"Reminder","message":"Time for a walk",'
    '"emotion":"happy"}}',
    "system": '{"device":{"type":"system","command":"reboot"}}',
    "notify": '{"device":{"type":"notify","event":"config_updated"}}',
}
TYPES_HINT = (
    "device.type is one of llm (emotion), alert (status, message, emotion), system (command) "
    'or notify (event "config_updated"), e.g. ' + EXAMPLES["llm"]
)


class BadDevicePush(ValueError):
    """A `device` push the relay will not send: what is wrong, and a hint with an example."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass(frozen=True, slots=True)
class DevicePush:
    """A checked device-native message, waiting for the session id of the device's connection."""

    type: PushType
    members: bytes  # the message's members as JSON text, without braces and session_id

    def message(self, session_id: str) -> bytes:
        """The text message the device receives: `session_id` first, then the caller's members."""
        return b'{"session_id":' + orjson.dumps(session_id) + b"," + self.members + b"}"


def decode(text: str) -> DevicePush:
    """Check a push's `device` member, given as its JSON text; raise `BadDevicePush` naming
    the field that is wrong.

    The other members reach the device as their source text (no re-serialisation: integers
    beyond 64 bits stay exact) and once each (a repeated name keeps its last value, the one
    checked here). A caller's `session_id` is dropped: the relay puts the connection's own
    first (§1.2)."""
    obj = jsonutil.loads(text)
    if not isinstance(obj, dict):
        raise BadDevicePush("device must be a JSON object with a type", TYPES_HINT)
    mtype = obj.get("type")
    if mtype not in PUSH_TYPES:
        raise BadDevicePush("device.type must be llm, alert, system or notify", TYPES_HINT)
    for field in _REQUIRED[mtype]:
        value = obj.get(field)
        if not isinstance(value, str) or not value.strip():
            raise BadDevicePush(
                f"device.{field} (a non-empty string) is required for type {mtype}",
                EXAMPLES[mtype],
            )
    if mtype == "notify" and obj["event"] not in NOTIFY_EVENTS:
        raise BadDevicePush(
            'device.event must be "config_updated" for type notify', EXAMPLES[mtype]
        )
    kept = (
        orjson.dumps(name) + b":" + source.encode()
        for name, source in jsonutil.members(text).items()
        if name != "session_id"
    )
    return DevicePush(mtype, b",".join(kept))
