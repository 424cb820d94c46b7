"""An MCP device for tests: the firmware-like tool server of devsim/mcp.py (modelled on
`main/mcp_server.cc`) on a real device WebSocket, with two pages of tools, and knobs that
make it misbehave (silence, slowness, wrong ids, a lying server name, huge lists)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType

from devsim.mcp import DeviceState, Tool, ToolServer, firmware_tools
from tests.relay.fakes import Device

MCP_HELLO: dict[str, Any] = {
    "type": "hello",
    "version": 1,
    "transport": "websocket",
    "features": {"mcp": True},
    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60},
}


@dataclass
class McpDevice:
    """Serves tools on `dev`'s WebSocket; other messages go to `others` (and `texts`)."""

    dev: Device
    tools: list[Tool] = field(default_factory=list)  # empty: the firmware's, two pages
    silent: set[str] = field(default_factory=set)  # methods never answered
    delay_s: float = 0.0  # before each tools/call runs and answers
    id_offset: int = 0  # answers carry id + this (a device that confuses its ids)
    server_name: str = "bread-compact-wifi"
    state: DeviceState = field(default_factory=DeviceState)
    requests: list[dict[str, Any]] = field(default_factory=list)
    others: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    texts: list[str] = field(default_factory=list)  # the other messages' text, as received
    called: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if not self.tools:
            self.tools = firmware_tools(self.state, board_tools=12)
        self.server = ToolServer(self.tools, name=self.server_name)

    @property
    def volume(self) -> int:
        return self.state.volume

    def start(self) -> McpDevice:
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def calls(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("method") == "tools/call"]

    async def send_payload(self, payload: Any) -> None:
        """An `mcp` message with `payload` (any JSON, or raw text when given bytes)."""
        sid = orjson.dumps(self.dev.session_id)
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        msg = b'{"session_id":%b,"type":"mcp","payload":%b}' % (sid, body)
        await self.dev.ws.send_str(msg.decode())

    async def _serve(self) -> None:
        while True:
            msg = await self.dev.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.TEXT:
                continue
            obj = orjson.loads(msg.data)
            if obj.get("type") != "mcp":
                self.texts.append(msg.data if isinstance(msg.data, str) else msg.data.decode())
                await self.others.put(obj)
                continue
            payload = obj["payload"]
            self.requests.append(payload)
            await self._handle(payload)

    async def _handle(self, p: dict[str, Any]) -> None:
        method = p.get("method")
        if method in self.silent:
            return
        if method == "tools/call":
            self.called.set()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        rid = p.get("id")
        if self.id_offset and isinstance(rid, int):
            p = {**p, "id": rid + self.id_offset}
        reply = self.server.handle(p)
        if reply is not None:
            await self.send_payload(reply)
