"""The device WebSocket endpoint: handshake, authentication, the hello (docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from protocol.device import Hello
from protocol.errors import ApiError, CloseCode
from protocol.session_state import Drop, Inbound, Opened, Refuse
from relay.answers import api_error, refused
from relay.auth.handshake import HandshakeError, parse_handshake
from relay.cluster.directory import DeviceDirectory
from relay.cors import origin_allowed
from relay.device.connection import DEVICE_ROOM, Connection, refusal
from relay.edge import EDGE_KEY, upgrade_tail
from relay.logs import ms, story
from relay.resources import RELAY_KEY, Relay

log = logging.getLogger(__name__)


async def _await_hello(ws: web.WebSocketResponse, relay: Relay, inbound: Inbound) -> Hello | None:
    """Wait for the device's hello (§1.2); other text gets `not_ready`, audio is dropped.
    None when the device leaves first, or is closed with 4000 for being too slow."""
    try:
        return await _read_hello(ws, relay, inbound)
    except TimeoutError:
        await ws.close(code=CloseCode.NO_HELLO, message=b"no hello")
        return None


async def _read_hello(ws: web.WebSocketResponse, relay: Relay, inbound: Inbound) -> Hello | None:
    async with asyncio.timeout(relay.config.server.hello_timeout_s):
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                verdict = inbound.binary(msg.data)
            elif msg.type == WSMsgType.TEXT:
                verdict = inbound.text(msg.data)
            elif msg.type == WSMsgType.PING:  # answered here, not by aiohttp: Connection.run
                await ws.pong(msg.data)
                continue
            elif msg.type == WSMsgType.PONG:
                continue
            else:
                return None
            if isinstance(verdict, Opened):
                relay.metrics.messages.labels("hello", "in").inc()
                return verdict.hello
            if isinstance(verdict, Refuse | Drop) and (reply := refusal(relay, verdict, None)):
                await ws.send_frame(reply, WSMsgType.TEXT)
    return None


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """`/v1/ws/` and `/xiaozhi/v1/`: authenticate before the upgrade, then serve the device."""
    relay = request.app[RELAY_KEY]
    m = relay.metrics
    if relay.draining.is_set():
        m.handshake_rejected.labels("draining").inc()
        _refused(request, "draining")
        return api_error(ApiError.DRAINING, "relay is shutting down")
    cfg = relay.config  # docs/protocol.md §1.8: a page from another origin, not a device
    if cfg.server.check_origin and not origin_allowed(
        cfg.ota.cors_origins, request.headers.get("Origin")
    ):
        m.handshake_rejected.labels("bad_origin").inc()
        _refused(request, "bad_origin")
        return api_error(ApiError.BAD_ORIGIN, "this page's origin may not open a device WebSocket")
    try:
        hs = relay.languages.complete(
            parse_handshake(request.headers, request.query), follow=cfg.asr.device_language
        )
        await relay.authenticator.check(hs)
    except HandshakeError as exc:
        m.handshake_rejected.labels(exc.code.value).inc()
        _refused(request, exc.code.value)
        return refused(exc)
    ws = web.WebSocketResponse(
        # aiohttp refuses a message of max_msg_size bytes; the relay takes max_message_bytes.
        max_msg_size=relay.config.server.max_message_bytes + 1,
        compress=False,
        # The relay answers pings itself, so that they count as traffic (§1.7 idle timeout).
        autoping=False,
        decode_text=False,
    )
    edge = request.app[EDGE_KEY].connection(request)  # None when served without the edge
    if edge is not None:
        edge.expect_frames(upgrade_tail(request))
    await ws.prepare(request)
    if edge is not None:
        edge.frames_open()
    inbound = Inbound(hs.protocol_version)
    hello = await _await_hello(ws, relay, inbound)
    if hello is None:
        await ws.close()
        _refused(request, "no_hello")
        return ws
    room = request.app[DEVICE_ROOM]
    conn = Connection(relay, room, ws, request.transport, hs, hello, inbound)
    previous = room.connections.add(conn)
    if previous is not None:  # §1.7: a newer connection of the same device replaces it
        conn.log.info("replacing previous connection")
        previous.request_close(CloseCode.REPLACED)
    m.connections_opened.inc()
    m.connections_active.inc()
    sid = conn.link.session_id
    _connected(request, relay, conn)
    try:
        # Presence, and on another node the old connection of this device closes with 4001.
        await relay.cluster.register(conn.presence(relay.cluster.node_id))
        await conn.run()
    finally:
        m.connections_active.dec()
        closed_by_edge = edge.close_code if edge is not None else None  # 1002: unmasked frame
        code = closed_by_edge or conn.link.close_code or ws.close_code or CloseCode.NORMAL
        m.connections_closed.labels(str(int(code))).inc()
        _closed(conn, int(code))
        if room.connections.remove(conn):
            await relay.cluster.unregister(hs.device_id, sid)
    return ws


def _connected(request: web.Request, relay: Relay, conn: Connection) -> None:
    story(
        log,
        "connect",
        device=conn.hs.device_id,
        session=conn.session_id,
        client=conn.hs.client_id or None,
        address=request.remote,
        protocol=conn.hs.protocol_version,
        auth=relay.config.auth.mode,
        node=relay.cluster.node_id,
    )


def _refused(request: web.Request, reason: str) -> None:
    # The device id as sent: the handshake may have been refused before it was read.
    raw = request.headers.get("Device-Id") or request.query.get("device-id")
    story(log, "refused", reason=reason, device=raw and raw[:80], address=request.remote)


def _closed(conn: Connection, code: int) -> None:
    duration_s = asyncio.get_running_loop().time() - conn.started
    try:
        reason = CloseCode(code).name.lower()
    except ValueError:
        reason = None
    story(
        log,
        "close",
        device=conn.device_id,
        session=conn.session_id,
        code=code,
        reason=reason,
        duration_ms=ms(duration_s),
    )


async def idle_sweeper(relay: Relay, devices: DeviceDirectory[Connection]) -> None:
    """Close devices silent for `idle_timeout_s` (docs/protocol.md §1.7); one task for all."""
    idle = relay.config.server.idle_timeout_s
    period = min(max(idle / 4, 0.05), 5.0)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for conn in devices:
            if now - conn.last_rx > idle:
                conn.log.info("idle for %.0fs: closing", idle)
                conn.request_close(CloseCode.NORMAL)
            elif conn.last_rx != conn.touched:  # last_seen, batched here, not per message
                conn.touched = conn.last_rx
                await relay.cluster.touch(conn.hs.device_id, conn.link.session_id)
        relay.sync_cluster_metrics()
        relay.metrics.count_tasks()
