"""Device tools over MCP (protocol/mcp.py): the requests the relay sends, what it makes of
the device's answers, the tool list within its caps, and the tools API wire."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol import mcp
from protocol.mcp import (
    Malformed,
    Notification,
    Reply,
    RpcError,
    ToolAnswer,
    ToolCollector,
    ToolRequest,
    ToolsPage,
)


def test_requests_have_integer_ids_and_the_documented_shape() -> None:
    init = orjson.loads(mcp.initialize(1))
    assert init["id"] == 1
    assert init["jsonrpc"] == "2.0"
    assert init["method"] == "initialize"
    assert init["params"]["capabilities"] == {}
    vision = orjson.loads(mcp.initialize(2, "https://v.example/x", "tok"))
    assert vision["params"]["capabilities"] == {
        "vision": {"url": "https://v.example/x", "token": "tok"}
    }
    assert orjson.loads(mcp.tools_list(3, "")) == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/list",
        "params": {"cursor": ""},
    }
    # The arguments' text is sent as given: a big integer stays exact.
    raw = mcp.tools_call(4, "self.x", b'{"n": 123456789012345678901234567890}')
    assert raw.endswith(b'"arguments":{"n": 123456789012345678901234567890}}}')
    assert orjson.loads(raw)["params"]["name"] == "self.x"


def test_device_message_wraps_the_payload_untouched() -> None:
    msg = mcp.device_message("S", b'{"jsonrpc":"2.0","id":1}')
    assert msg == b'{"session_id":"S","type":"mcp","payload":{"jsonrpc":"2.0","id":1}}'


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":1,"result":{"a":1}}', Reply(1, {"a": 1})),
        (
            b'{"jsonrpc":"2.0","id":2,"error":{"message":"Unknown tool: x"}}',
            Reply(2, error=RpcError("Unknown tool: x")),
        ),
        (
            b'{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"m"}}',
            Reply(2, error=RpcError("m", -32601)),
        ),
        (
            b'{"jsonrpc":"2.0","id":2,"error":{"code":true,"message":5}}',
            Reply(2, error=RpcError("device error")),
        ),
        (b'{"jsonrpc":"2.0","method":"notifications/x"}', Notification("notifications/x")),
        (b'{"jsonrpc":"2.0","id":5,"method":"ping"}', Notification("ping")),
        (b"{", Malformed("bad_json")),
        (b"[]", Malformed("not_jsonrpc")),
        (b'{"jsonrpc":"1.0","id":1,"result":1}', Malformed("not_jsonrpc")),
        (b'{"jsonrpc":"2.0","id":"1","result":1}', Malformed("bad_id")),
        (b'{"jsonrpc":"2.0","id":true,"result":1}', Malformed("bad_id")),
        (b'{"jsonrpc":"2.0","id":1,"error":"x"}', Malformed("bad_error")),
        (b'{"jsonrpc":"2.0","id":1}', Malformed("no_result")),
    ],
)
def test_parse(payload: bytes, expected: object) -> None:
    assert mcp.parse(payload) == expected


def test_error_message_is_cut() -> None:
    long = orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"message": "x" * 5000}})
    got = mcp.parse(long)
    assert isinstance(got, Reply)
    assert got.error is not None
    assert len(got.error.message) == mcp.MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            {"serverInfo": {"name": "board", "version": "1.0", "x": 1}},
            {"name": "board", "version": "1.0"},
        ),
        ({"serverInfo": {"name": "n" * 100, "version": 3}}, {"name": "n" * mcp.MAX_INFO_CHARS}),
        ({"serverInfo": "board"}, {}),
        ("result", {}),
    ],
)
def test_server_info(result: Any, expected: dict[str, str]) -> None:
    assert mcp.server_info(result) == expected


def test_tools_page_keeps_usable_tools() -> None:
    page = mcp.tools_page(
        {
            "tools": [
                {"name": "a", "description": "d", "inputSchema": {"type": "object"}, "extra": 1},
                {"name": "b"},
                {"name": ""},
                {"name": "n" * (mcp.MAX_NAME_CHARS + 1)},
                {"description": "no name"},
                "tool",
            ],
            "nextCursor": "c",
        }
    )
    assert page == ToolsPage(
        [
            {"name": "a", "description": "d", "inputSchema": {"type": "object"}},
            {"name": "b", "description": "", "inputSchema": mcp.EMPTY_SCHEMA},
        ],
        4,
        "c",
    )
    assert mcp.tools_page({"tools": [], "nextCursor": 5}) == ToolsPage([], 0, "")
    assert mcp.tools_page({"tools": {}}) is None
    assert mcp.tools_page(None) is None


def _page(*names: str, invalid: int = 0, size: int = 0) -> ToolsPage:
    return ToolsPage(
        [{"name": n, "description": "d" * size, "inputSchema": {}} for n in names], invalid, ""
    )


def test_collector_caps_count_and_size_and_drops_duplicates() -> None:
    c = ToolCollector(max_tools=3, max_bytes=10_000)
    c.add(_page("a", "b", "a", invalid=2))
    assert not c.full
    c.add(_page("c", "d", "e"))
    assert c.full
    tools, count = c.result()
    assert count == 3
    assert [t["name"] for t in orjson.loads(tools)] == ["a", "b", "c"]
    assert c.dropped == {"invalid": 2, "duplicate": 1, "max_tools": 2}
    small = ToolCollector(max_tools=100, max_bytes=1024)
    small.add(_page("a", "b", "c", size=400))
    small.add(_page("d"))
    tools, count = small.result()
    assert count == 2
    assert len(tools) <= 1024
    assert small.full
    assert small.dropped == {"max_bytes": 2}
    assert mcp.has_tool(tools, "b")
    assert not mcp.has_tool(tools, "c")


@pytest.mark.parametrize(
    "req",
    [ToolRequest(None, b"{}", 3.0), ToolRequest("self.x", b'{"a":\n1}', 0.5)],
)
def test_tool_request_round_trip(req: ToolRequest) -> None:
    assert mcp.decode_request(mcp.encode_request(req)) == req


@pytest.mark.parametrize(
    "raw",
    [b"", b"x\n", b"[]\n", b'{"name":1,"ttl":1}\n', b'{"name":"a","ttl":0}\n', b'{"name":"a"}\n'],
)
def test_foreign_tool_requests_are_refused(raw: bytes) -> None:
    assert mcp.decode_request(raw) is None


def test_answers() -> None:
    listed = orjson.loads(mcp.list_answer(b'[{"name":"a"}]', {"name": "b"}, 2).body)
    assert listed == {"server_info": {"name": "b"}, "dropped": 2, "tools": [{"name": "a"}]}
    ok = mcp.call_answer(Reply(1, {"content": [], "isError": False}))
    assert ok == ToolAnswer(None, b'{"is_error":false,"result":{"content":[],"isError":false}}')
    failed = orjson.loads(mcp.call_answer(Reply(1, {"isError": True})).body)
    assert failed["is_error"] is True
    err = orjson.loads(mcp.call_answer(Reply(1, error=RpcError("m", -1))).body)
    assert err == {
        "is_error": True,
        "error": {"code": "device_error", "message": "m", "rpc_code": -1},
    }
    assert mcp.error_json(RpcError("m")) == {"code": "device_error", "message": "m"}
    assert mcp.reason_json("timeout") == {
        "code": "timeout",
        "message": mcp.REASON_MESSAGES["timeout"],
    }
    assert set(mcp.REASON_MESSAGES) == set(mcp.REASONS)
