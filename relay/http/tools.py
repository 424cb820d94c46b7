"""Tools API: list and call a device's MCP tools on any node (docs/protocol.md §3.2); the
answers are as truthful as a push's (§4).

GET  /api/v1/devices/{device_id}/tools
POST /api/v1/devices/{device_id}/tools/{name}   {"arguments": {…}, "timeout_s": 10}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol import jsonutil
from protocol.errors import ApiError, api_error_body
from protocol.mcp import ToolAnswer, ToolReason, ToolRequest
from relay.answers import api_error
from relay.auth.handshake import canonical_device_id
from relay.cluster.directory import DeviceDirectory
from relay.device.connection import Connection
from relay.http.api import read_body
from relay.resources import RELAY_KEY

MAX_CALL_BODY = 64 * 1024
MAX_TIMEOUT_S = 60.0
_CALL_EXAMPLE = '{"arguments":{"volume":50},"timeout_s":10}'
ERRORS: dict[ToolReason, tuple[ApiError, str | None]] = {
    "offline": (ApiError.OFFLINE, None),
    "timeout": (ApiError.TIMEOUT, "the device did not answer in time; it may still run the call"),
    "redis_unavailable": (ApiError.REDIS_UNAVAILABLE, None),
    "mcp_unsupported": (ApiError.MCP_UNSUPPORTED, None),
    "tools_unavailable": (ApiError.TOOLS_UNAVAILABLE, None),
    "unknown_tool": (ApiError.UNKNOWN_TOOL, None),
    "bad_arguments": (ApiError.BAD_REQUEST, _CALL_EXAMPLE),
    "too_many_calls": (ApiError.BAD_REQUEST, None),  # never from the API; for completeness
}


async def list_tools(request: web.Request) -> web.Response:
    """The device's tools and server info, from whichever node holds it."""
    relay = request.app[RELAY_KEY]
    device_id = canonical_device_id(request.match_info["device_id"])
    req = ToolRequest(None, timeout_s=relay.config.redis.push_timeout_s)
    answer, node = await relay.cluster.tools(device_id, req)
    return _answer(device_id, answer, node, listing=True)


async def call_tool(request: web.Request) -> web.Response:
    """Run one tool on the device, wherever it is connected; its result or error."""
    relay = request.app[RELAY_KEY]
    raw = await read_body(request, MAX_CALL_BODY)
    if raw is None:
        return api_error(ApiError.TOO_LARGE, f"body over {MAX_CALL_BODY} bytes")
    got = _call_request(raw, request.match_info["name"], relay.config.mcp.timeout_s)
    if isinstance(got, web.Response):
        return got
    device_id = canonical_device_id(request.match_info["device_id"])
    answer, node = await relay.cluster.tools(device_id, got)
    return _answer(device_id, answer, node, listing=False)


def _call_request(raw: bytes, name: str, default_timeout_s: float) -> ToolRequest | web.Response:
    """The call a POST body asks for (an empty body: no arguments), or the error to answer."""
    if not raw.strip():
        return ToolRequest(name, b"{}", default_timeout_s)
    try:
        body = jsonutil.loads(raw)
    except jsonutil.TooDeep as exc:
        return api_error(ApiError.TOO_DEEP, str(exc))
    except ValueError:
        return api_error(ApiError.BAD_JSON, "body is not JSON", _CALL_EXAMPLE)
    if not isinstance(body, dict):
        return api_error(ApiError.BAD_REQUEST, "body must be a JSON object", _CALL_EXAMPLE)
    if not isinstance(body.get("arguments", {}), dict):
        return api_error(ApiError.BAD_REQUEST, "arguments must be a JSON object", _CALL_EXAMPLE)
    timeout_s = body.get("timeout_s", default_timeout_s)
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        msg = f"timeout_s must be a number above 0 and at most {MAX_TIMEOUT_S:g}"
        return api_error(ApiError.BAD_REQUEST, msg, _CALL_EXAMPLE)
    arguments = jsonutil.member_text(raw.decode(), "arguments") or "{}"
    return ToolRequest(name, arguments.encode(), float(timeout_s))


def _answer(device_id: str, answer: ToolAnswer, node: str | None, *, listing: bool) -> web.Response:
    if answer.reason is None:
        head: dict[str, Any] = {"device_id": device_id, "node": node}
        if not listing:
            head["delivered"] = True
        # Parsed again with the same care as any peer's JSON: big integers stay exact.
        return web.json_response(head | jsonutil.loads(answer.body))
    code, hint = ERRORS[answer.reason]
    status, err = api_error_body(code, f"no answer from the device: {answer.reason}", hint)
    out = {"device_id": device_id, "delivered": False, "reason": answer.reason, "node": node}
    return web.json_response(out | err, status=status)


async def serve(
    devices: DeviceDirectory[Connection], device_id: str, req: ToolRequest
) -> ToolAnswer:
    """This node's answer for a device it holds: its tool list, or a call's outcome."""
    conn = devices.get(device_id)
    if conn is None or conn.link.closed:
        return ToolAnswer("offline")
    client = conn.session.mcp
    if client is None:
        return ToolAnswer("mcp_unsupported")
    if req.name is None:
        return client.list_answer()
    return await client.call(req.name, req.arguments, req.timeout_s, "api")
