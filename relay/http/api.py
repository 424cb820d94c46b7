"""The relay's HTTP API: simulate, voices, health, readiness, metrics (docs/openapi.yaml)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web

from metrics.registry import CONTENT_TYPE, Metrics
from protocol import device, jsonutil
from protocol.audio_format import AudioFormat
from protocol.device import Custom
from protocol.errors import ApiError, ProtocolError
from relay.answers import api_error, api_exception
from relay.auth.handshake import api_allowed, canonical_device_id, metrics_allowed
from relay.device.connection import DEVICE_ROOM, new_session_id
from relay.device.session import Session
from relay.device.sse_link import SSELink
from relay.edge import EDGE_KEY
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

MAX_SIMULATE_BODY = 64 * 1024
_SIMULATE_EXAMPLE = '{"device_id":"…","text":"…"}'


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` bytes (chunked bodies included).
    Raises a 408 when the body is not complete within `[server] request_body_timeout_s`, and
    a 400 when it ends early or its chunked framing is broken; a client gone mid-body is
    one DEBUG line, not the traceback aiohttp would log for a handler's exception."""
    timeout_s = request.app[RELAY_KEY].config.server.request_body_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        request.app[EDGE_KEY].refused("body_timeout")
        msg = f"body not received in {timeout_s:g} s"
        raise api_exception(ApiError.REQUEST_TIMEOUT, msg) from None
    except (ConnectionResetError, web.RequestPayloadError) as exc:
        log.debug("request body cut short: %s", type(exc).__name__)
        raise api_exception(ApiError.BAD_BODY, "body cut short or undecodable") from None
    return b"".join(chunks)


async def read_json(
    request: web.Request, limit: int, example: str
) -> tuple[bytes, Any] | web.Response:
    """The body and its JSON value, or the error to answer: 413 over `limit`, 400 not JSON
    or nested too deep."""
    raw = await read_body(request, limit)
    if raw is None:
        return api_error(ApiError.TOO_LARGE, f"body over {limit} bytes")
    try:
        return raw, jsonutil.loads(raw)
    except jsonutil.TooDeep as exc:
        return api_error(ApiError.TOO_DEEP, str(exc))
    except ValueError:
        return api_error(ApiError.BAD_JSON, "body is not JSON", example)


@web.middleware
async def api_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer tokens from `[api] tokens` on `/api/` and `/metrics`; without tokens, loopback
    only. Health endpoints stay open for load balancers."""
    if request.path.startswith("/api/") or request.path == "/metrics":
        config = request.app[RELAY_KEY].config
        cfg, auth = config.api, request.headers.get("Authorization")
        if request.path == "/metrics":
            allowed = metrics_allowed(auth, request.remote, cfg, config.metrics.tokens)
        else:
            allowed = api_allowed(auth, request.remote, cfg)
        if not allowed:
            hint = (
                "send Authorization: Bearer <token> from [api] tokens"
                + (" or, for /metrics, [metrics] tokens" if config.metrics.tokens else "")
                if cfg.tokens or config.metrics.tokens
                else "no [api] tokens are configured, so only loopback clients are served"
            )
            return api_error(ApiError.UNAUTHORIZED, "missing or invalid API token", hint)
    resp: web.StreamResponse = await handler(request)
    return resp


async def simulate(request: web.Request) -> web.StreamResponse:
    """`POST /api/v1/simulate`: run one turn as a device would, answer as SSE."""
    relay = request.app[RELAY_KEY]
    if relay.draining.is_set():
        return api_error(ApiError.DRAINING, "relay is shutting down")
    got = await read_json(request, MAX_SIMULATE_BODY, _SIMULATE_EXAMPLE)
    if isinstance(got, web.Response):
        return got
    raw, body = got
    problem = _check_simulate(body)
    if problem:
        return api_error(ApiError.BAD_REQUEST, problem, _SIMULATE_EXAMPLE)
    agent = body.get("agent") or ""
    if agent and agent not in relay.targets:
        return api_error(ApiError.UNKNOWN_AGENT, f"no business named {agent!r}")
    device_id = canonical_device_id(body["device_id"])
    custom: Custom | None = None
    if "custom" in body:
        # Forward the payload's own text, as for a device: re-serialising would turn integers
        # beyond 64 bits into floats and rewrite numbers such as 1.50 (docs/protocol.md §2.1).
        payload_text = jsonutil.member_text(raw.decode(), "custom") or "null"
        try:
            custom_msg = device.decode('{"type":"custom","payload":' + payload_text + "}")
        except ProtocolError:
            return api_error(ApiError.BAD_REQUEST, "custom must be a JSON object")
        assert isinstance(custom_msg, Custom)
        custom = custom_msg

    cfg = relay.config
    downlink = relay.downlink(AudioFormat())
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    link = SSELink(
        resp,
        new_session_id(),
        relay.metrics,
        cfg.server.outbox_max,
        downlink.frame_s,
        device.DEFAULT_PLAY_BUFFER_MS / 1000,
        audio_base64=request.query.get("audio") == "base64",
    )
    room = request.app[DEVICE_ROOM]
    session = Session(
        link,
        room.deps,
        downlink,
        device_id=device_id,
        target=relay.target_for(device_id, agent),
        max_passthrough=cfg.server.max_passthrough_per_session,
    )
    handler = asyncio.current_task()
    assert handler is not None
    room.simulations[handler] = session  # a drain waits for its turn (relay/run/server.py)
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
        del room.simulations[handler]
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


async def voices(request: web.Request) -> web.Response:
    """`GET /api/v1/voices`: what each configured TTS provider can speak, by the name a
    business sends as `tts_provider`, so that a `voice_type` can be chosen from it."""
    speaker = request.app[DEVICE_ROOM].deps.speaker
    lists = await speaker.voice_lists()
    providers = [
        {
            "name": name,
            "engine": v.engine,
            "default": name == speaker.default,
            "voices": list(v.voices),
            "default_voices": dict(v.defaults),
            "blends": v.blends,
        }
        for name, v in sorted(lists.items())
    ]
    return web.json_response({"default_provider": speaker.default, "providers": providers})


async def healthz(_request: web.Request) -> web.Response:
    """Alive; names the worker process that answered (useful with several workers)."""
    return web.json_response({"status": "ok"}, headers={"X-Relay-Worker": str(os.getpid())})


_REDIS_HINT = (
    "Redis is away or does not answer: devices connect and talk, but presence, "
    "listing and pushes cover this node only until it returns"
)
_BUSINESS_HINT = (
    "a business service cannot be reached: its devices get business_unreachable until it "
    "answers (`businesses` names them, the log their URLs)"
)


async def readyz(request: web.Request) -> web.Response:
    """Ready to take devices; 503 while draining; "degraded" (still 200: devices are served)
    while the cluster store (Redis) is away or does not answer."""
    relay = request.app[RELAY_KEY]
    if relay.draining.is_set():
        return web.json_response({"status": "draining"}, status=503)
    reasons: list[str] = []
    hints: list[str] = []
    if not relay.cluster.available:
        reasons.append("redis_unavailable")
        hints.append(_REDIS_HINT)
    unreachable = sorted(request.app[DEVICE_ROOM].deps.reach.unreachable)
    if unreachable:
        reasons.append("business_unreachable")
        hints.append(_BUSINESS_HINT)
    if not reasons:
        return web.json_response({"status": "ready"})
    answer = {"status": "degraded", "reason": reasons[0], "reasons": reasons}
    return web.json_response({**answer, "hint": "; ".join(hints), "businesses": unreachable})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    return exposition(request.app[RELAY_KEY].metrics)


def exposition(metrics: Metrics) -> web.Response:
    """`/metrics`'s answer: the task count and process gauges read now, then every metric."""
    metrics.count_tasks()
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


def metrics_app(metrics: Metrics) -> web.Application:
    """The app of the `[metrics] port` listener: `/metrics` of the relay's own `metrics` and
    nothing else, without a token, so that Prometheus holds no credential at all (the
    address is the operator's to keep internal)."""

    async def serve(_request: web.Request) -> web.Response:
        return exposition(metrics)

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app
