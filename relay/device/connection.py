"""One device WebSocket after its hello: the reader loop, its session and its link
(docs/protocol.md §1)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from protocol import device
from protocol.binary import FrameType, decode_frame
from protocol.device import Hello
from protocol.errors import CloseCode, ProtocolError
from relay.auth.handshake import Handshake
from relay.cluster.base import Presence
from relay.device.link import WebSocketLink
from relay.device.session import Session
from relay.resources import Relay

log = logging.getLogger(__name__)


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
        self.play_buffer_ms = hello.play_buffer_ms
        self.link = WebSocketLink(
            ws,
            transport,
            hs.protocol_version,
            new_session_id(),
            relay.metrics,
            cfg.server.outbox_max,
            downlink.frame_s,
            hello.play_buffer_ms / 1000,
        )
        self.session = Session(
            self.link,
            relay.deps,
            downlink,
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
        link.send_json(
            device.hello_reply(link.session_id, self.downlink, self.play_buffer_ms), "hello"
        )
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
            if isinstance(msg.data, WebSocketError):  # aiohttp closed with its code (1009)
                self.link.request_close(msg.data.code)
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


def presence_of(conn: Connection, node: str) -> Presence:
    """What the cluster knows of a local connection."""
    return Presence(
        device_id=conn.hs.device_id,
        node=node,
        session_id=conn.link.session_id,
        connected_at=conn.connected_at,
        last_seen=conn.connected_at + (conn.last_rx - conn.started),
    )
