"""An MCP device for tests, modelled on the firmware's `main/mcp_server.cc`: a tool server
inside `{"type":"mcp"}` messages on a real device WebSocket. Like the firmware it ignores a
request whose `jsonrpc`, `method` or integer `id` is missing, pages `tools/list` at about
8,000 bytes with `nextCursor` = the name of the next page's first tool, answers errors as
`{"message"}` without a code, and checks a call's arguments against the tool's properties.
Knobs let a test make it misbehave (silence, wrong ids, huge lists)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType

from tests.relay.fakes import Device

PAGE_BYTES = 8000  # the firmware's max_payload_size
MCP_HELLO: dict[str, Any] = {
    "type": "hello",
    "version": 1,
    "transport": "websocket",
    "features": {"mcp": True},
    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60},
}


@dataclass
class Prop:
    """One argument of a tool: "integer" (with bounds), "string" or "boolean"."""

    type: str
    lo: int | None = None
    hi: int | None = None
    default: Any = None


@dataclass
class Tool:
    name: str
    description: str
    props: dict[str, Prop]
    run: Callable[[dict[str, Any]], Any]

    def json(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for name, p in self.props.items():
            prop: dict[str, Any] = {"type": p.type}
            if p.lo is not None:
                prop |= {"minimum": p.lo, "maximum": p.hi}
            if p.default is not None:
                prop["default"] = p.default
            props[name] = prop
        schema: dict[str, Any] = {"type": "object", "properties": props}
        required = [n for n, p in self.props.items() if p.default is None]
        if required:
            schema["required"] = required
        return {"name": self.name, "description": self.description, "inputSchema": schema}


@dataclass
class McpDevice:
    """Serves tools on `dev`'s WebSocket; other messages go to `others`."""

    dev: Device
    volume: int = 50
    brightness: int = 80
    tools: list[Tool] = field(default_factory=list)
    silent: set[str] = field(default_factory=set)  # methods never answered
    delay_s: float = 0.0  # before each tools/call answer
    id_offset: int = 0  # answers carry id + this (a device that confuses its ids)
    server_name: str = "bread-compact-wifi"
    requests: list[dict[str, Any]] = field(default_factory=list)
    others: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    texts: list[str] = field(default_factory=list)  # the other messages' text, as received
    called: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if not self.tools:
            self.tools = firmware_tools(self)

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
        await self.dev.ws.send_str(
            (b'{"session_id":%b,"type":"mcp","payload":%b}' % (sid, body)).decode()
        )

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
        # ParseMessage: version, method, params object, numeric id, else dropped.
        method, params, rid = p.get("method"), p.get("params"), p.get("id")
        if p.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return
        if method.startswith("notifications") or method in self.silent:
            return
        if params is not None and not isinstance(params, dict):
            return
        if isinstance(rid, bool) or not isinstance(rid, int):
            return
        rid += self.id_offset
        if method == "initialize":
            info = {"name": self.server_name, "version": "1.6.2"}
            await self._result(
                rid,
                {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {"tools": {}},
                    "serverInfo": info,
                },
            )
        elif method == "tools/list":
            await self._list(rid, (params or {}).get("cursor", ""))
        elif method == "tools/call":
            await self._call(rid, params)
        else:
            await self._error(rid, f"Method not implemented: {method}")

    async def _list(self, rid: int, cursor: str) -> None:
        found = not cursor
        parts: list[bytes] = []
        size = len(b'{"tools":[')
        next_cursor = ""
        for tool in self.tools:
            if not found:
                if tool.name != cursor:
                    continue
                found = True
            part = orjson.dumps(tool.json())
            if size + len(part) + 1 + 30 > PAGE_BYTES:
                next_cursor = tool.name
                break
            parts.append(part)
            size += len(part) + 1
        if not parts and self.tools:
            await self._error(
                rid, f"Failed to add tool {next_cursor} because of payload size limit"
            )
            return
        body = b'{"tools":[' + b",".join(parts) + b"]"
        if next_cursor:
            body += b',"nextCursor":' + orjson.dumps(next_cursor)
        await self._raw_result(rid, body + b"}")

    async def _call(self, rid: int, params: Any) -> None:
        if not isinstance(params, dict):
            await self._error(rid, "Missing params")
            return
        name, args = params.get("name"), params.get("arguments")
        if not isinstance(name, str):
            await self._error(rid, "Missing name")
            return
        if args is not None and not isinstance(args, dict):
            await self._error(rid, "Invalid arguments")
            return
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            await self._error(rid, f"Unknown tool: {name}")
            return
        values: dict[str, Any] = {}
        for pname, prop in tool.props.items():
            value: Any = (args or {}).get(pname)
            if _of_type(value, prop.type):
                if prop.lo is not None and not prop.lo <= value <= (prop.hi or 0):
                    await self._error(rid, "Value is out of range")
                    return
                values[pname] = value
            elif prop.default is not None:
                values[pname] = prop.default
            else:
                await self._error(rid, f"Missing valid argument: {pname}")
                return
        self.called.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = tool.run(values)
        text = orjson.dumps(out).decode() if isinstance(out, dict) else str(out).lower()
        await self._result(rid, {"content": [{"type": "text", "text": text}], "isError": False})

    async def _result(self, rid: int, result: Any) -> None:
        await self._raw_result(rid, orjson.dumps(result))

    async def _raw_result(self, rid: int, result: bytes) -> None:
        await self.send_payload(b'{"jsonrpc":"2.0","id":%d,"result":%b}' % (rid, result))

    async def _error(self, rid: int, message: str) -> None:
        await self.send_payload({"jsonrpc": "2.0", "id": rid, "error": {"message": message}})


def _of_type(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def firmware_tools(dev: McpDevice) -> list[Tool]:
    """The firmware's common tools, and enough board tools that the list takes two pages."""

    def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"audio_speaker": {"volume": dev.volume}, "screen": {"brightness": dev.brightness}}

    def set_volume(args: dict[str, Any]) -> bool:
        dev.volume = args["volume"]
        return True

    def set_brightness(args: dict[str, Any]) -> bool:
        dev.brightness = args["brightness"]
        return True

    tools = [
        Tool(
            "self.get_device_status",
            "Provides the real-time information of the device, including the current status"
            " of the audio speaker, screen, battery, network, etc.",
            {},
            status,
        ),
        Tool(
            "self.audio_speaker.set_volume",
            "Set the volume of the audio speaker. If the current volume is unknown, you must"
            " call `self.get_device_status` tool first and then call this tool.",
            {"volume": Prop("integer", 0, 100)},
            set_volume,
        ),
        Tool(
            "self.screen.set_brightness",
            "Set the brightness of the screen.",
            {"brightness": Prop("integer", 0, 100)},
            set_brightness,
        ),
        Tool(
            "self.screen.set_theme",
            "Set the theme of the screen. The theme can be `light` or `dark`.",
            {"theme": Prop("string")},
            lambda args: True,
        ),
    ]
    # Board tools (a motor, lamps, …) with long descriptions: the list spills onto a second page.
    tools += [
        Tool(
            f"self.board.motor_{i}.move",
            f"Move motor {i} by a number of steps. " + "Use it to turn the device's head. " * 12,
            {"steps": Prop("integer", -1000, 1000), "fast": Prop("boolean", default=False)},
            lambda args: True,
        )
        for i in range(12)
    ]
    return tools
