"""A device's MCP tool server, as xiaozhi firmware runs it (`main/mcp_server.cc`): JSON-RPC
2.0 inside `{"type":"mcp"}` messages (docs/protocol.md §3). Like the firmware it ignores a
request without `jsonrpc` 2.0, a `method` or an integer `id`, pages `tools/list` at about
8,000 bytes with `nextCursor` = the name of the next page's first tool, answers errors as
`{"message"}` without a code, and checks a call's arguments against the tool's properties.
`devsim --mcp` serves it; the relay's tests wrap it to misbehave on purpose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

PAGE_BYTES = 8000  # the firmware's max_payload_size


@dataclass
class Prop:
    """One argument: "integer" (with bounds), "string" or "boolean"; None default = required."""

    type: str
    lo: int | None = None
    hi: int | None = None
    default: Any = None


@dataclass
class Tool:
    """A tool: its name, description, arguments, and what it does (its return is the text)."""

    name: str
    description: str
    props: dict[str, Prop]
    run: Callable[[dict[str, Any]], Any]

    def json(self) -> dict[str, Any]:
        """The tool as `tools/list` shows it."""
        props: dict[str, Any] = {}
        for name, p in self.props.items():
            prop: dict[str, Any] = {"type": p.type}
            if p.lo is not None:
                prop |= {"minimum": p.lo, "maximum": p.hi}
            if p.default is not None:
                prop["default"] = p.default
            props[name] = prop
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if required := [n for n, p in self.props.items() if p.default is None]:
            schema["required"] = required
        return {"name": self.name, "description": self.description, "inputSchema": schema}


@dataclass
class DeviceState:
    """What the firmware's common tools read and change."""

    volume: int = 50
    brightness: int = 80
    theme: str = "light"


@dataclass
class ToolServer:
    """Answers one JSON-RPC request at a time; `handle` gives the reply payload, or None."""

    tools: list[Tool]
    name: str = "bread-compact-wifi"
    version: str = "1.6.2"

    def handle(self, p: Any) -> bytes | None:
        """The reply to payload `p`; None for what the firmware drops without a word."""
        if not isinstance(p, dict):
            return None
        method, params, rid = p.get("method"), p.get("params"), p.get("id")
        if p.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return None
        if method.startswith("notifications"):
            return None
        if params is not None and not isinstance(params, dict):
            return None
        if isinstance(rid, bool) or not isinstance(rid, int):
            return None  # the firmware logs "Invalid id" and drops it
        if method == "initialize":  # capabilities.vision would set the camera's upload URL
            info = {"name": self.name, "version": self.version}
            init = {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}}}
            return result(rid, orjson.dumps({**init, "serverInfo": info}))
        if method == "tools/list":
            cursor = (params or {}).get("cursor", "")
            return self._list(rid, cursor if isinstance(cursor, str) else "")
        if method == "tools/call":
            return self._call(rid, params)
        return error(rid, f"Method not implemented: {method}")

    def _list(self, rid: int, cursor: str) -> bytes:
        found, parts, next_cursor = not cursor, [], ""
        size = len(b'{"tools":[')
        for tool in self.tools:
            if not found and tool.name != cursor:
                continue
            found = True
            part = orjson.dumps(tool.json())
            if size + len(part) + 1 + 30 > PAGE_BYTES:
                next_cursor = tool.name
                break
            parts.append(part)
            size += len(part) + 1
        if not parts and self.tools:
            return error(rid, f"Failed to add tool {next_cursor} because of payload size limit")
        body = b'{"tools":[' + b",".join(parts) + b"]"
        if next_cursor:
            body += b',"nextCursor":' + orjson.dumps(next_cursor)
        return result(rid, body + b"}")

    def _call(self, rid: int, params: Any) -> bytes:
        if not isinstance(params, dict):
            return error(rid, "Missing params")
        name, args = params.get("name"), params.get("arguments")
        if not isinstance(name, str):
            return error(rid, "Missing name")
        if args is not None and not isinstance(args, dict):
            return error(rid, "Invalid arguments")
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            return error(rid, f"Unknown tool: {name}")
        values: dict[str, Any] = {}
        for pname, prop in tool.props.items():
            value: Any = (args or {}).get(pname)
            if _of_type(value, prop.type):
                if prop.lo is not None and not prop.lo <= value <= (prop.hi or 0):
                    return error(rid, "Value is out of range")
                values[pname] = value
            elif prop.default is not None:
                values[pname] = prop.default
            else:
                return error(rid, f"Missing valid argument: {pname}")
        out = tool.run(values)
        text = orjson.dumps(out).decode() if isinstance(out, dict) else str(out).lower()
        content = {"content": [{"type": "text", "text": text}], "isError": False}
        return result(rid, orjson.dumps(content))


def result(rid: int, body: bytes) -> bytes:
    """A JSON-RPC result, `body` the result's JSON text."""
    return b'{"jsonrpc":"2.0","id":%d,"result":%b}' % (rid, body)


def error(rid: int, message: str) -> bytes:
    """A JSON-RPC error as the firmware writes it: a message, no code."""
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": {"message": message}})


def _of_type(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def firmware_tools(state: DeviceState, board_tools: int = 0) -> list[Tool]:
    """The firmware's common tools on `state`, then `board_tools` motor tools with long
    descriptions (12 of them spill the list onto a second page)."""

    def status(_: dict[str, Any]) -> dict[str, Any]:
        return {
            "audio_speaker": {"volume": state.volume},
            "screen": {"brightness": state.brightness, "theme": state.theme},
        }

    def setter(attr: str, key: str) -> Callable[[dict[str, Any]], bool]:
        def run(args: dict[str, Any]) -> bool:
            setattr(state, attr, args[key])
            return True

        return run

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
            setter("volume", "volume"),
        ),
        Tool(
            "self.screen.set_brightness",
            "Set the brightness of the screen.",
            {"brightness": Prop("integer", 0, 100)},
            setter("brightness", "brightness"),
        ),
        Tool(
            "self.screen.set_theme",
            "Set the theme of the screen. The theme can be `light` or `dark`.",
            {"theme": Prop("string")},
            setter("theme", "theme"),
        ),
    ]
    tools += [
        Tool(
            f"self.board.motor_{i}.move",
            f"Move motor {i} by a number of steps. " + "Use it to turn the device's head. " * 12,
            {"steps": Prop("integer", -1000, 1000), "fast": Prop("boolean", default=False)},
            lambda args: True,
        )
        for i in range(board_tools)
    ]
    return tools
