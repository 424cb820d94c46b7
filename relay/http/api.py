"""The relay's HTTP API: simulate, health, readiness, metrics (docs/openapi.yaml)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web

from metrics.registry import CONTENT_TYPE
from protocol import device, jsonutil
from protocol.codes import ProtocolError
from protocol.device import AudioParams, Custom
from relay.auth.handshake import api_allowed, canonical_device_id
from relay.device.connection import new_session_id
from relay.device.link import SSELink
from relay.device.session import Session
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

MAX_SIMULATE_BODY = 64 * 1024
_SIMULATE_EXAMPLE = '{"device_id":"…","text":"…"}'


def api_error(status: int, error_type: str, error: str, hint: str = "") -> web.Response:
    """Every API error has this shape: `{"error","errorType","hint"}`."""
    return web.json_response({"error": error, "errorType": error_type, "hint": hint}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` bytes (chunked bodies included)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(
    request: web.Request, limit: int, example: str
) -> tuple[bytes, Any] | web.Response:
    """The body and its JSON value, or the error to answer: 413 over `limit`, 400 not JSON."""
    raw = await read_body(request, limit)
    if raw is None:
        return api_error(413, "too_large", f"body over {limit} bytes")
    try:
        return raw, jsonutil.loads(raw)
    except ValueError:
        return api_error(400, "bad_json", "body is not JSON", example)


@web.middleware
async def api_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer tokens from `[api] tokens` on `/api/` and `/metrics`; without tokens, loopback
    only. Health endpoints stay open for load balancers."""
    if request.path.startswith("/api/") or request.path == "/metrics":
        cfg = request.app[RELAY_KEY].config.api
        if not api_allowed(request.headers.get("Authorization"), request.remote, cfg):
            hint = (
                "send Authorization: Bearer <token> from [api] tokens"
                if cfg.tokens
                else "no [api] tokens are configured, so only loopback clients are served"
            )
            return api_error(401, "unauthorized", "missing or invalid API token", hint)
    resp: web.StreamResponse = await handler(request)
    return resp


async def simulate(request: web.Request) -> web.StreamResponse:
    """`POST /api/v1/simulate`: run one turn as a device would, answer as SSE."""
    relay = request.app[RELAY_KEY]
    got = await read_json(request, MAX_SIMULATE_BODY, _SIMULATE_EXAMPLE)
    if isinstance(got, web.Response):
        return got
    raw, body = got
    problem = _check_simulate(body)
    if problem:
        return api_error(400, "bad_request", problem, _SIMULATE_EXAMPLE)
    agent = body.get("agent") or ""
    if agent and agent not in relay.targets:
        return api_error(
            400, "unknown_agent", f"no business named {agent!r}", "see [[business]] name"
        )
    device_id = canonical_device_id(body["device_id"])
    custom: Custom | None = None
    if "custom" in body:
        # Forward the payload's own text, as for a device: re-serialising would turn integers
        # beyond 64 bits into floats and rewrite numbers such as 1.50 (docs/protocol.md §2.1).
        payload_text = jsonutil.member_text(raw.decode(), "custom") or "null"
        try:
            custom_msg = device.decode('{"type":"custom","payload":' + payload_text + "}")
        except ProtocolError:
            return api_error(400, "bad_request", "custom must be a JSON object")
        assert isinstance(custom_msg, Custom)
        custom = custom_msg

    cfg = relay.config
    downlink = relay.downlink(AudioParams())
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    link = SSELink(
        resp,
        new_session_id(),
        relay.metrics,
        cfg.server.outbox_max,
        downlink.frame_duration / 1000,
        downlink.play_buffer_duration / 1000,
        audio_base64=request.query.get("audio") == "base64",
    )
    session = Session(
        link,
        relay.deps,
        relay.downlink_format(downlink),
        device_id=device_id,
        target=relay.target_for(device_id, agent),
        max_passthrough=cfg.server.max_passthrough_per_session,
    )
    try:
        if custom is not None:
            session.custom(custom)
        else:
            link.send_json(device.stt(link.session_id, body["text"]), "stt")
            session.chat(body["text"])
        # The stream ends with the turn, or earlier when the client goes away.
        idle = asyncio.ensure_future(session.wait_idle())
        gone = asyncio.ensure_future(link.wait_closed())
        await asyncio.wait((idle, gone), return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        gone.cancel()
        await link.flush(5.0)
    finally:
        await session.close()
        await link.close()
    return resp


def _check_simulate(body: Any) -> str:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("device_id"), str) or not body["device_id"].strip():
        return "device_id (string) is required"
    has_text, has_custom = "text" in body, "custom" in body
    if has_text == has_custom:
        return "give exactly one of text or custom"
    if has_text and (not isinstance(body["text"], str) or not body["text"].strip()):
        return "text must be a non-empty string"
    if "agent" in body and (not isinstance(body["agent"], str) or not body["agent"]):
        return "agent must be the non-empty name of a configured business"
    return ""


async def healthz(_request: web.Request) -> web.Response:
    """Alive; names the worker process that answered (useful with several workers)."""
    return web.json_response({"status": "ok"}, headers={"X-Relay-Worker": str(os.getpid())})


_DEGRADED = {
    "status": "degraded",
    "reason": "redis_unavailable",
    "hint": "Redis is away or does not answer: devices connect and talk, but presence, "
    "listing and pushes cover this node only until it returns",
}


async def readyz(request: web.Request) -> web.Response:
    """Ready to take devices; 503 while draining; "degraded" (still 200: devices are served)
    while the cluster store (Redis) is away or does not answer."""
    relay = request.app[RELAY_KEY]
    if relay.draining.is_set():
        return web.json_response({"status": "draining"}, status=503)
    if not relay.cluster.available:
        return web.json_response(_DEGRADED)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    metrics = request.app[RELAY_KEY].metrics
    metrics.count_tasks()
    body = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
