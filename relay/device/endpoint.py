"""The device WebSocket endpoint: handshake, authentication, the hello (docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from protocol import device
from protocol.binary import FrameType, decode_frame
from protocol.codes import CloseCode, DeviceError, ProtocolError
from protocol.device import Hello
from relay.auth.handshake import HandshakeError, parse_handshake
from relay.cors import origin_allowed
from relay.device.connection import Connection, presence_of
from relay.resources import RELAY_KEY, Relay

log = logging.getLogger(__name__)


async def _await_hello(ws: web.WebSocketResponse, relay: Relay, version: int) -> Hello | None:
    """Wait for the device's hello (§1.2); other text gets `not_ready`, audio is dropped."""
    m = relay.metrics
    async with asyncio.timeout(relay.config.server.hello_timeout_s):
        async for msg in ws:
            data: bytes | str
            if msg.type == WSMsgType.BINARY:
                try:
                    frame = decode_frame(version, msg.data)
                except ProtocolError as exc:
                    m.protocol_errors.labels(exc.code.value).inc()
                    continue
                if frame.type is not FrameType.JSON:
                    m.protocol_errors.labels(DeviceError.NOT_READY.value).inc()
                    continue
                data = frame.payload
            elif msg.type == WSMsgType.TEXT:
                data = msg.data
            else:
                return None
            try:
                decoded = device.decode(data)
            except ProtocolError as exc:
                m.protocol_errors.labels(exc.code.value).inc()
                await ws.send_frame(device.error(None, exc.code), WSMsgType.TEXT)
                continue
            if isinstance(decoded, Hello):
                m.messages.labels("hello", "in").inc()
                return decoded
            await ws.send_frame(device.error(None, DeviceError.NOT_READY), WSMsgType.TEXT)
    return None


def _reject(status: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {"error": message, "errorType": reason, "hint": _HINTS.get(reason, "")}, status=status
    )


_HINTS = {
    "bad_token": "send Authorization: Bearer <token> (or ?authorization=) with a configured token",
    "device_not_allowed": "add the device id to [auth] allowed_devices",
    "no_device_id": "send the Device-Id header (or ?device-id=)",
    "bad_version": "send Protocol-Version 1, 2 or 3",
    "draining": "connect to another relay or retry shortly",
    "token_store_unavailable": "the token store (Redis) is unreachable; retry shortly",
    "bad_origin": "add the page's origin to [ota] cors_origins (or [server] check_origin = false)",
}


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """`/v1/ws/` and `/xiaozhi/v1/`: authenticate before the upgrade, then serve the device."""
    relay = request.app[RELAY_KEY]
    m = relay.metrics
    if relay.draining.is_set():
        m.handshake_rejected.labels("draining").inc()
        return _reject(503, "draining", "relay is shutting down")
    cfg = relay.config  # docs/protocol.md §1.8: a page from another origin, not a device
    if cfg.server.check_origin and not origin_allowed(
        cfg.ota.cors_origins, request.headers.get("Origin")
    ):
        m.handshake_rejected.labels("bad_origin").inc()
        return _reject(403, "bad_origin", "this page's origin may not open a device WebSocket")
    try:
        hs = parse_handshake(request.headers, request.query)
        await relay.authenticator.check(hs)
    except HandshakeError as exc:
        m.handshake_rejected.labels(exc.reason).inc()
        return _reject(exc.status, exc.reason, exc.message)
    ws = web.WebSocketResponse(
        max_msg_size=relay.config.server.max_message_bytes,
        compress=False,
        autoping=True,
        decode_text=False,
    )
    await ws.prepare(request)
    try:
        hello = await _await_hello(ws, relay, hs.protocol_version)
    except TimeoutError:
        hello = None
        await ws.close(code=CloseCode.NO_HELLO, message=b"no hello")
    if hello is None:
        await ws.close()
        return ws
    conn = Connection(relay, ws, request.transport, hs, hello)
    previous = relay.connections.get(hs.device_id)
    relay.connections[hs.device_id] = conn
    if previous is not None:  # §1.7: a newer connection of the same device replaces it
        conn.log.info("replacing previous connection")
        previous.link.request_close(CloseCode.REPLACED)
    m.connections_opened.inc()
    m.connections_active.inc()
    sid = conn.link.session_id
    try:
        # Presence, and on another node the old connection of this device closes with 4001.
        await relay.cluster.register(presence_of(conn, relay.cluster.node_id))
        await conn.run()
    finally:
        m.connections_active.dec()
        code = conn.link.close_code or ws.close_code or CloseCode.NORMAL
        m.connections_closed.labels(str(int(code))).inc()
        if relay.connections.get(hs.device_id) is conn:
            del relay.connections[hs.device_id]
            await relay.cluster.unregister(hs.device_id, sid)
    return ws


async def idle_sweeper(relay: Relay) -> None:
    """Close devices silent for `idle_timeout_s` (docs/protocol.md §1.7); one task for all."""
    idle = relay.config.server.idle_timeout_s
    period = min(max(idle / 4, 0.05), 5.0)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for conn in list(relay.connections.values()):
            if now - conn.last_rx > idle:
                conn.log.info("idle for %.0fs: closing", idle)
                conn.link.request_close(CloseCode.NORMAL)
            elif conn.last_rx != conn.touched:  # last_seen, batched here, not per message
                conn.touched = conn.last_rx
                await relay.cluster.touch(conn.hs.device_id, conn.link.session_id)
        relay.sync_cluster_metrics()
        relay.metrics.count_tasks()
