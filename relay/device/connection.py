"""One device WebSocket after its hello: the reader loop, its session and its link
(docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from protocol import device
from protocol.device import DetectRules, Hello
from protocol.errors import CloseCode
from protocol.session_state import Audio, Deliver, Drop, Inbound, Refuse
from relay.auth.handshake import Handshake
from relay.cluster.base import Presence
from relay.cluster.directory import DeviceDirectory
from relay.device.link import WebSocketLink
from relay.device.listener import VoiceDeps
from relay.device.mcp import McpClient
from relay.device.session import Session
from relay.device.turn import TurnDeps
from relay.logsafe import printable
from relay.resources import Relay

log = logging.getLogger(__name__)


def new_session_id() -> str:
    """An unguessable session id: 128 random bits (§1.2 asks for at least 96)."""
    return secrets.token_urlsafe(16)


class DeviceLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes log lines with the device id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{printable(self.extra['device']) if self.extra else '?'}] {msg}", kwargs


class Connection:
    """One device WebSocket after hello: reader loop, its session and its link."""

    def __init__(
        self,
        relay: Relay,
        room: DeviceRoom,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        hs: Handshake,
        hello: Hello,
        inbound: Inbound,
    ) -> None:
        self.relay = relay
        self.ws = ws
        self.hs = hs
        self.inbound = inbound
        # §1.5: a pushed notify goes only to a device whose hello declared it.
        self.notify_config_updated = hello.notify_config_updated
        cfg = relay.config
        downlink = relay.downlink(hello.audio_params)
        self.downlink = downlink
        self.play_buffer_ms = min(hello.play_buffer_ms, device.MAX_PLAY_LEAD_MS)  # §1.6
        self.link = WebSocketLink(
            ws,
            transport,
            hs.protocol_version,
            new_session_id(),
            relay.metrics,
            cfg.server.outbox_max,
            downlink.frame_s,
            self.play_buffer_ms / 1000,
        )
        mcp = None
        if hello.mcp and cfg.mcp.enabled:  # §3.1
            mcp = McpClient(self.link, cfg.mcp, relay.metrics, hs.device_id)
        self.session = Session(
            self.link,
            room.deps,
            downlink,
            device_id=hs.device_id,
            target=relay.target_for(hs.device_id, hs.agent_id),
            max_passthrough=cfg.server.max_passthrough_per_session,
            voice=room.voice.speaking(hs.language) if room.voice is not None else None,
            uplink=relay.uplink_format(hello.audio_params),
            detect=room.detect,
            mcp=mcp,
            max_tool_calls=cfg.mcp.max_calls_per_turn,
        )
        self.log = DeviceLog(log, {"device": hs.device_id})
        self.last_rx = self.started = asyncio.get_running_loop().time()
        self.connected_at = time.time()
        self.touched = self.last_rx  # last_rx already reported to the cluster
        self.task: asyncio.Task[Any] | None = None  # the reader, once running
        self._audio_in = (
            relay.metrics.audio_frames.labels("in"),
            relay.metrics.message_bytes.labels("audio", "in"),
        )

    @property
    def device_id(self) -> str:
        """The canonical device id (§1.1)."""
        return self.hs.device_id

    @property
    def session_id(self) -> str:
        """The relay-generated session id (§1.2)."""
        return self.link.session_id

    def presence(self, node: str) -> Presence:
        """What the cluster knows of this connection."""
        return Presence(
            device_id=self.hs.device_id,
            node=node,
            session_id=self.link.session_id,
            connected_at=self.connected_at,
            last_seen=self.connected_at + (self.last_rx - self.started),
        )

    def request_close(self, code: int) -> None:
        """Close this connection with `code` (§1.7), from any task."""
        self.link.request_close(code)

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
        link.send_json(
            device.hello_reply(link.session_id, self.downlink, self.play_buffer_ms), "hello"
        )
        self.session.start_mcp()  # right after the relay's hello (§3.1)
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
                if msg.type == WSMsgType.PING:
                    # docs/protocol.md §1.7: a client's WebSocket ping is traffic: py-xiaozhi
                    # keeps an idle connection alive with one every 20 s.
                    try:
                        await self.ws.pong(msg.data)
                    except ConnectionResetError:
                        break
                    continue
                if not self._on_message(msg):
                    break
        finally:
            link.wake = None
            await self.session.close()
            await link.close(link.close_code or CloseCode.NORMAL)

    def _on_message(self, msg: Any) -> bool:
        if msg.type == WSMsgType.TEXT:
            verdict = self.inbound.text(msg.data)
        elif msg.type == WSMsgType.BINARY:
            verdict = self.inbound.binary(msg.data)
        elif msg.type == WSMsgType.PONG:  # unsolicited (the relay sends no pings): a heartbeat
            return True
        elif msg.type == WSMsgType.ERROR:
            self.log.info("websocket error: %s", type(self.ws.exception()).__name__)
            if isinstance(msg.data, WebSocketError):  # aiohttp closed with its code (1009)
                self.link.request_close(msg.data.code)
            return False
        else:  # CLOSE, CLOSING, CLOSED
            return False
        if isinstance(verdict, Audio):
            count, size = self._audio_in
            count.inc()
            size.inc(len(verdict.payload))
            self.session.on_audio(verdict.payload)
        elif isinstance(verdict, Deliver):
            count, size = self.relay.metrics.message_counters(
                _TYPE_LABEL[type(verdict.message)], "in"
            )
            count.inc()
            size.inc(verdict.size)
            self.session.handle(verdict.message)
        elif isinstance(verdict, Refuse | Drop) and (
            reply := refusal(self.relay, verdict, self.link.session_id)
        ):
            self.link.send_json(reply, "error")
        return True


def refusal(relay: Relay, verdict: Refuse | Drop, session_id: str | None) -> bytes | None:
    """Count a frame the device should not have sent; the `error` to send it, if any (§1.5)."""
    relay.metrics.protocol_errors.labels(verdict.code.value).inc()
    if isinstance(verdict, Drop):
        return None
    relay.metrics.messages.labels("invalid", "in").inc()
    return device.error(session_id, verdict.code)


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


@dataclass(slots=True)
class DeviceRoom:
    """What device sessions need besides the relay's resources, and this node's devices."""

    deps: TurnDeps
    voice: VoiceDeps | None = None
    detect: DetectRules = field(default_factory=DetectRules)
    connections: DeviceDirectory[Connection] = field(default_factory=DeviceDirectory)
    # Simulate streams in progress: the handler's task and its session, drained like devices.
    simulations: dict[asyncio.Task[Any], Session] = field(default_factory=dict)


DEVICE_ROOM: web.AppKey[DeviceRoom] = web.AppKey("device_room", DeviceRoom)
