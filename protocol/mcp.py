"""Device tools over MCP (docs/protocol.md §3): the JSON-RPC 2.0 requests the relay sends as
the MCP client of a device's tool server, what it makes of the device's answers, and the
requests and answers of the tools API. Pure: bytes in, values out.

The firmware (`main/mcp_server.cc`) drops a request whose id is not a number, answers errors
as `{"message"}` without a code, and pages `tools/list` with `nextCursor` (the name of the
first tool of the next page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from protocol import jsonutil

PROTOCOL_VERSION = "2024-11-05"  # the MCP revision the firmware answers with
MAX_NAME_CHARS = 128  # a tool name longer than this is not a name: the tool is dropped
MAX_INFO_CHARS = 64  # serverInfo name and version are cut to this
MAX_MESSAGE_CHARS = 500  # a device error message is cut to this
MAX_PAGES = 64  # tools/list pages followed at most (a device that pages forever)
EMPTY_SCHEMA = {"type": "object", "properties": {}}

# Why a tool request got no answer from the device; the tools API maps each to an HTTP
# status (docs/protocol.md §3.2), a `tool_result` error carries it as its `code` (§3.3).
ToolReason = Literal[
    "offline",
    "timeout",
    "redis_unavailable",
    "mcp_unsupported",
    "tools_unavailable",
    "unknown_tool",
    "bad_arguments",
    "too_many_calls",
]
REASONS: tuple[ToolReason, ...] = get_args(ToolReason)
REASON_MESSAGES: dict[ToolReason, str] = {
    "offline": "the device is not connected",
    "timeout": "the device did not answer in time",
    "redis_unavailable": "the cluster store is unreachable",
    "mcp_unsupported": "the device declared no MCP support in its hello",
    "tools_unavailable": "the device's tool list is not known",
    "unknown_tool": "the device has no tool of that name",
    "bad_arguments": "arguments must be a JSON object",
    "too_many_calls": "more tool calls in this turn than the relay allows",
}


# ---- relay → device ----------------------------------------------------------------------


def device_message(session_id: str, payload: bytes) -> bytes:
    """The device message carrying one JSON-RPC payload (§1.5), the payload bytes as given."""
    return b'{"session_id":%b,"type":"mcp","payload":%b}' % (orjson.dumps(session_id), payload)


def initialize(rid: int, vision_url: str = "", vision_token: str = "") -> bytes:
    """`initialize`; `capabilities.vision` tells a camera where to send pictures (§3.1)."""
    caps: dict[str, Any] = {}
    if vision_url:
        caps["vision"] = {"url": vision_url, "token": vision_token}
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": caps,
        "clientInfo": {"name": "voice-relay", "version": "1"},
    }
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": params})


def tools_list(rid: int, cursor: str) -> bytes:
    """`tools/list` from `cursor` ("" for the first page)."""
    params = {"cursor": cursor}
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": params})


def tools_call(rid: int, name: str, arguments: bytes) -> bytes:
    """`tools/call` of `name`; `arguments` is the JSON object's source text, untouched."""
    head = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call"})
    return head[:-1] + b',"params":{"name":%b,"arguments":%b}}' % (orjson.dumps(name), arguments)


# ---- device → relay ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RpcError:
    """A JSON-RPC error from the device: its message (cut), and its code when it gave one."""

    message: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The device's answer to request `id`: a result, or an error."""

    id: int
    result: Any = None
    error: RpcError | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A message the device sent of its own accord (a notification, or a request)."""

    method: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A payload that is not JSON-RPC 2.0 the relay can use; `why` is a metric label."""

    why: Literal["bad_json", "not_jsonrpc", "bad_id", "bad_error", "no_result"]


Incoming = Reply | Notification | Malformed


def parse(payload: bytes) -> Incoming:
    """What one device `mcp` payload is."""
    try:
        obj = jsonutil.loads(payload)
    except ValueError:
        return Malformed("bad_json")
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        return Malformed("not_jsonrpc")
    method = obj.get("method")
    if isinstance(method, str):
        return Notification(method)
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int):
        return Malformed("bad_id")
    if "error" in obj:
        err = obj["error"]
        if not isinstance(err, dict):
            return Malformed("bad_error")
        message, code = err.get("message"), err.get("code")
        text = message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else "device error"
        number = code if isinstance(code, int) and not isinstance(code, bool) else None
        return Reply(rid, error=RpcError(text, number))
    if "result" not in obj:
        return Malformed("no_result")
    return Reply(rid, result=obj["result"])


def server_info(result: Any) -> dict[str, str]:
    """`serverInfo` of an `initialize` result: name and version as short strings."""
    info = result.get("serverInfo") if isinstance(result, dict) else None
    if not isinstance(info, dict):
        return {}
    return {
        key: value[:MAX_INFO_CHARS]
        for key in ("name", "version")
        if isinstance(value := info.get(key), str)
    }


@dataclass(frozen=True, slots=True)
class ToolsPage:
    """One `tools/list` result: its usable tools, how many were not, and the next cursor."""

    tools: list[dict[str, Any]]
    invalid: int
    next_cursor: str


def tools_page(result: Any) -> ToolsPage | None:
    """The tools of a `tools/list` result; None when it is not one."""
    if not isinstance(result, dict) or not isinstance(tools := result.get("tools"), list):
        return None
    good = [t for t in map(_tool, tools) if t is not None]
    cursor = result.get("nextCursor")
    return ToolsPage(good, len(tools) - len(good), cursor if isinstance(cursor, str) else "")


def _tool(tool: Any) -> dict[str, Any] | None:
    """A tool as the relay keeps it (name, description, inputSchema); None when unusable."""
    if not isinstance(tool, dict):
        return None
    name, description, schema = tool.get("name"), tool.get("description"), tool.get("inputSchema")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        return None
    return {
        "name": name,
        "description": description if isinstance(description, str) else "",
        "inputSchema": schema if isinstance(schema, dict) else EMPTY_SCHEMA,
    }


class ToolCollector:
    """Gathers the pages of a tool list within caps on the count and the JSON size; what a
    cap or a duplicate name leaves out is counted in `dropped`."""

    def __init__(self, max_tools: int, max_bytes: int) -> None:
        self._max_tools = max_tools
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._names: set[str] = set()
        self._size = 2  # the brackets
        self.dropped: dict[str, int] = {}

    @property
    def full(self) -> bool:
        """No further tool would be kept."""
        return len(self._parts) >= self._max_tools or self._size >= self._max_bytes

    def add(self, page: ToolsPage) -> None:
        """Keep the page's tools that fit."""
        if page.invalid:
            self._drop("invalid", page.invalid)
        for tool in page.tools:
            part = jsonutil.dumps(tool)
            if tool["name"] in self._names:
                self._drop("duplicate")
            elif len(self._parts) >= self._max_tools:
                self._drop("max_tools")
            elif self._size + len(part) + 1 > self._max_bytes:
                self._drop("max_bytes")
                self._size = self._max_bytes  # the list is full: later tools are dropped too
            else:
                self._parts.append(part)
                self._names.add(tool["name"])
                self._size += len(part) + 1

    def _drop(self, why: str, n: int = 1) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + n

    def result(self) -> tuple[bytes, int]:
        """The kept tools as one JSON array, and how many."""
        return b"[" + b",".join(self._parts) + b"]", len(self._parts)


def has_tool(tools: bytes, name: str) -> bool:
    """Whether the JSON array `tools` (a `ToolCollector` result) names a tool `name`."""
    return any(t.get("name") == name for t in orjson.loads(tools))


# ---- the tools API and the node wire ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A tools API request for the node holding the device: list (`name` None) or call."""

    name: str | None
    arguments: bytes = b"{}"  # the JSON object's source text
    timeout_s: float = 10.0


def encode_request(req: ToolRequest) -> bytes:
    """Wire form of `req`: a JSON head line, then the arguments untouched."""
    return orjson.dumps({"name": req.name, "ttl": req.timeout_s}) + b"\n" + req.arguments


def decode_request(raw: bytes) -> ToolRequest | None:
    """Parse what `encode_request` wrote; None for anything else."""
    h, arguments = jsonutil.head_and_body(raw)
    if h is None:
        return None
    name, ttl = h.get("name"), h.get("ttl")
    if (name is None or isinstance(name, str)) and isinstance(ttl, int | float) and ttl > 0:
        return ToolRequest(name, arguments, float(ttl))
    return None


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """What the device's node answers: why there is no answer, or the answer's JSON object
    (`{"tools","server_info","dropped"}` for a list, `{"result"|"error","is_error"}` for a call)."""

    reason: ToolReason | None
    body: bytes = b"{}"


def list_answer(tools: bytes, info: dict[str, str], dropped: int) -> ToolAnswer:
    """The answer to a list request."""
    head = orjson.dumps({"server_info": info, "dropped": dropped})
    return ToolAnswer(None, head[:-1] + b',"tools":%b}' % tools)


def call_answer(reply: Reply) -> ToolAnswer:
    """The answer to a call the device answered: its CallToolResult, or its error."""
    if reply.error is not None:
        return ToolAnswer(None, orjson.dumps({"is_error": True, "error": error_json(reply.error)}))
    result = reply.result
    failed = isinstance(result, dict) and result.get("isError") is True
    return ToolAnswer(None, jsonutil.dumps({"is_error": failed, "result": result}))


def error_json(err: RpcError) -> dict[str, Any]:
    """A device's JSON-RPC error as the business and the API see it."""
    out: dict[str, Any] = {"code": "device_error", "message": err.message}
    if err.code is not None:
        out["rpc_code"] = err.code
    return out


def reason_json(reason: ToolReason) -> dict[str, str]:
    """A failure without a device answer, as a `tool_result` error (§3.3)."""
    return {"code": reason, "message": REASON_MESSAGES[reason]}
