"""The device WebSocket endpoint: handshake, hello, the reader loop (docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from protocol import device
from protocol.binary import FrameType, decode_frame
from protocol.codes import CloseCode, DeviceError, ProtocolError
from protocol.device import Hello
from relay.auth import Handshake, HandshakeError, parse_handshake
from relay.cluster import Presence
from relay.context import Relay
from relay.cors import origin_allowed
from relay.link import WebSocketLink
from relay.session import Session

log = logging.getLogger(__name__)

RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay", Relay)


def new_session_id() -> str:
    """An unguessable session id: 128 random bits (§1.2 asks for at least 96)."""
    return secrets.token_urlsafe(16)


class DeviceLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes log lines with the device id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['device'] if self.extra else '?'}] {msg}", kwargs


class Connection:
    """One device WebSocket after hello: reader loop, its session and its link."""

    def __init__(
        self,
        relay: Relay,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        hs: Handshake,
        hello: Hello,
    ) -> None:
        self.relay = relay
        self.ws = ws
        self.hs = hs
        # §1.5: a pushed notify goes only to a device whose hello declared it.
        self.notify_config_updated = hello.notify_config_updated
        cfg = relay.config
        downlink = relay.downlink(hello.audio_params)
        self.downlink = downlink
        self.link = WebSocketLink(
            ws,
            transport,
            hs.protocol_version,
            new_session_id(),
            relay.metrics,
            cfg.server.outbox_max,
            downlink.frame_duration / 1000,
            downlink.play_buffer_duration / 1000,
        )
        self.session = Session(
            self.link,
            relay.deps,
            relay.downlink_format(downlink),
            device_id=hs.device_id,
            target=relay.target_for(hs.device_id, hs.agent_id),
            max_passthrough=cfg.server.max_passthrough_per_session,
            voice=relay.voice,
            uplink=relay.uplink_format(hello.audio_params),
            detect=relay.detect,
        )
        self.log = DeviceLog(log, {"device": hs.device_id})
        self.last_rx = self.started = asyncio.get_running_loop().time()
        self.connected_at = time.time()
        self.touched = self.last_rx  # last_rx already reported to the cluster
        self.task: asyncio.Task[Any] | None = None  # the reader, once running
        self._bad_frame_reported = False
        self._audio_in = (
            relay.metrics.audio_frames.labels("in"),
            relay.metrics.message_bytes.labels("audio", "in"),
        )

    async def run(self) -> None:
        """Answer hello, then read until the device leaves or the link is closed."""
        link = self.link
        task = self.task = asyncio.current_task()
        assert task is not None
        reading = woken = False

        def wake() -> None:
            # Another task asked to close (replaced, overflow, idle, shutdown): interrupt
            # receive() by cancelling this reader, and tell our own wake-up from a real
            # cancellation with uncancel(), so a caller's cancellation is never lost. When
            # the reader is not in receive(), its loop condition sees the closed link.
            nonlocal woken
            if reading and not woken:
                woken = True
                task.cancel()

        link.wake = wake
        link.send_json(device.hello_reply(link.session_id, self.downlink), "hello")
        loop = asyncio.get_running_loop()
        try:
            while not link.closed:
                reading = True
                try:
                    msg = await self.ws.receive()  # no timeout per message: the idle sweep
                except asyncio.CancelledError:
                    if woken and task.uncancel() == 0:
                        break
                    raise
                finally:
                    reading = False
                self.last_rx = loop.time()
                if not self._on_message(msg):
                    break
        finally:
            link.wake = None
            await self.session.close()
            await link.close(link.close_code or CloseCode.NORMAL)

    def _on_message(self, msg: Any) -> bool:
        m = self.relay.metrics
        if msg.type == WSMsgType.TEXT:
            self._on_text(msg.data)
        elif msg.type == WSMsgType.BINARY:
            try:
                frame = decode_frame(self.hs.protocol_version, msg.data)
            except ProtocolError as exc:
                m.protocol_errors.labels(exc.code.value).inc()
                if not self._bad_frame_reported:  # once: a broken framer would flood the log
                    self._bad_frame_reported = True
                    self.link.send_json(device.error(self.link.session_id, exc.code), "error")
                return True
            if frame.type is FrameType.JSON:
                self._on_text(frame.payload)
            else:
                count, size = self._audio_in
                count.inc()
                size.inc(len(frame.payload))
                self.session.on_audio(frame.payload)
        elif msg.type == WSMsgType.ERROR:
            self.log.info("websocket error: %s", type(self.ws.exception()).__name__)
            return False
        else:  # CLOSE, CLOSING, CLOSED
            return False
        return True

    def _on_text(self, data: bytes | str) -> None:
        m = self.relay.metrics
        try:
            msg = device.decode(data)
        except ProtocolError as exc:
            m.protocol_errors.labels(exc.code.value).inc()
            m.messages.labels("invalid", "in").inc()
            self.link.send_json(device.error(self.link.session_id, exc.code), "error")
            return
        count, size = m.message_counters(_TYPE_LABEL[type(msg)], "in")
        count.inc()
        size.inc(len(data))
        self.session.handle(msg)


_TYPE_LABEL = {
    device.Hello: "hello",
    device.Listen: "listen",
    device.Abort: "abort",
    device.Custom: "custom",
    device.Mcp: "mcp",
    device.Ping: "ping",
    device.Goodbye: "goodbye",
    device.Iot: "iot",
}


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


def presence_of(conn: Connection, node: str) -> Presence:
    """What the cluster knows of a local connection."""
    return Presence(
        device_id=conn.hs.device_id,
        node=node,
        session_id=conn.link.session_id,
        connected_at=conn.connected_at,
        last_seen=conn.connected_at + (conn.last_rx - conn.started),
    )


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
