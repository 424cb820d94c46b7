"""Devices API: push to a device on any node, and cluster-wide presence (docs/protocol.md §4).

POST /api/v1/devices/{device_id}/messages   {"command": {…event…}} | {"speak": "…", "voice": {…}}
                                            | {"device": {"type": "llm", "emotion": "happy"}}
GET  /api/v1/devices?cursor=&limit=
GET  /api/v1/devices/{device_id}
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from protocol import device_push, jsonutil
from protocol.business import speak_with_voice
from protocol.device_push import BadDevicePush
from protocol.errors import HTTP, ApiError, api_error_body
from protocol.node import PushReason
from relay.answers import api_error
from relay.auth.handshake import canonical_device_id
from relay.cluster.base import Presence
from relay.cluster.directory import DeviceDirectory
from relay.device.connection import Connection
from relay.http.api import read_json
from relay.logs import story
from relay.logsafe import printable
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

MAX_PUSH_BODY = 64 * 1024
MAX_SPEAK_CHARS = 2000
_PUSH_EXAMPLE = (
    '{"command":{"event":"message","type":"command","details":{…}}}, {"speak":"…"} or '
    '{"device":{"type":"llm","emotion":"happy"}}'
)


async def push(request: web.Request) -> web.Response:
    """Deliver a command, speech or a device-native message to a device wherever it is
    connected; say truly whether it got it."""
    relay = request.app[RELAY_KEY]
    got = await read_json(request, MAX_PUSH_BODY, _PUSH_EXAMPLE)
    if isinstance(got, web.Response):
        return got
    raw, body = got
    problem = _check_push(body, raw.decode())
    if problem is not None:
        return api_error(ApiError.BAD_REQUEST, *problem)
    device_id = canonical_device_id(request.match_info["device_id"])
    timeout_s = relay.config.redis.push_timeout_s
    result = await relay.cluster.push(device_id, raw, timeout_s)
    outcome = "delivered" if result.delivered else (result.reason or "rejected")
    relay.metrics.push.labels(outcome).inc()
    if result.delivered:
        return web.json_response({"delivered": True, "node": result.node})
    status, body = api_error_body(ApiError(outcome), f"not delivered: {outcome}")
    return web.json_response(
        {"delivered": False, "reason": outcome, "node": result.node} | body, status=status
    )


def _check_push(body: Any, text: str) -> tuple[str, str] | None:
    """What is wrong with a push body (parsed from `text`) and a hint to fix it; None when
    it is fine."""
    if not isinstance(body, dict):
        return "body must be a JSON object", _PUSH_EXAMPLE
    if sum(form in body for form in ("command", "speak", "device")) != 1:
        return "give exactly one of command, speak or device", _PUSH_EXAMPLE
    if "command" in body and not isinstance(body["command"], dict):
        return "command must be a JSON object (a business-style event)", _PUSH_EXAMPLE
    if "speak" in body:
        speech = body["speak"]
        if not isinstance(speech, str) or not speech.strip():
            return "speak must be a non-empty string", _PUSH_EXAMPLE
        if len(speech) > MAX_SPEAK_CHARS:
            return f"speak is longer than {MAX_SPEAK_CHARS} characters", _PUSH_EXAMPLE
        if "voice" in body and not isinstance(body["voice"], dict):
            return (
                "voice must be a JSON object (tts_provider, voice_type, speed_ratio, …)",
                _PUSH_EXAMPLE,
            )
    if "device" in body:
        try:
            device_push.decode(_member(text, "device"))
        except BadDevicePush as exc:
            return exc.error, exc.hint
    return None


async def deliver(
    devices: DeviceDirectory[Connection], device_id: str, message: bytes
) -> PushReason | None:
    """Hand a validated push to the local connection of `device_id` (the owning node): None
    when the connection took it, else why not."""
    conn = devices.get(device_id)
    if conn is None or conn.link.closed:
        return "rejected"
    try:
        body = jsonutil.loads(message)
        text = message.decode()
    except ValueError:
        log.warning("undecodable push for %s dropped", printable(device_id))
        return "rejected"
    if _check_push(body, text) is not None:
        return "rejected"
    if "command" in body:
        conn.session.push_command(_member(text, "command").encode())  # its own bytes (§2.4)
    elif "speak" in body:
        voice = body.get("voice") or {}
        conn.session.push_speak(speak_with_voice(body["speak"], voice))
    else:
        pushed = device_push.decode(_member(text, "device"))
        if pushed.type == "notify" and not conn.notify_config_updated:
            return "not_supported"  # §1.5: only to devices that declared it in their hello
        conn.session.push_device(pushed)
    kind = "command" if "command" in body else "speak" if "speak" in body else pushed.type
    story(log, "push", device=conn.device_id, session=conn.session_id, kind=kind)
    return None


def _member(text: str, key: str) -> str:
    """The source text of a member the body is known to have (validated JSON)."""
    return jsonutil.member_text(text, key) or "null"


async def list_devices(request: web.Request) -> web.Response:
    """Presence across the cluster, one page at a time."""
    relay = request.app[RELAY_KEY]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return api_error(ApiError.BAD_REQUEST, "limit must be an integer", "?limit=100")
    if not 1 <= limit <= 1000:
        return api_error(ApiError.BAD_REQUEST, "limit must be between 1 and 1000", "?limit=100")
    cursor = request.query.get("cursor") or None
    page = await relay.cluster.list(cursor, limit)
    body: dict[str, Any] = {
        "devices": [_presence_json(p) for p in page.devices],
        "next_cursor": page.next_cursor,
    }
    if page.partial:
        # Listing only what this node holds must not pass for the whole cluster.
        body["partial"] = True
        body["hint"] = HTTP[ApiError.REDIS_UNAVAILABLE][1]
    return web.json_response(body)


async def get_device(request: web.Request) -> web.Response:
    """One device's presence, or 404."""
    relay = request.app[RELAY_KEY]
    device_id = canonical_device_id(request.match_info["device_id"])
    found = await relay.cluster.locate(device_id)
    if found is None and not relay.cluster.available:
        # Only this node's devices are known now: "not connected" could be false.
        return api_error(ApiError.REDIS_UNAVAILABLE, "the cluster store is unreachable")
    if found is None:
        return api_error(ApiError.OFFLINE, "the device is not connected", "GET /api/v1/devices")
    return web.json_response(_presence_json(found))


def _presence_json(p: Presence) -> dict[str, Any]:
    return {
        "device_id": p.device_id,
        "node": p.node,
        "session_id": p.session_id,
        "connected_at": p.connected_at,
        "last_seen": p.last_seen,
    }
