"""Device tools over MCP on one node (docs/protocol.md §3.1, §3.2): the set-up after a hello
with `features.mcp`, the tools API, and a device that misbehaves (wrong ids, malformed
JSON-RPC, huge lists, silence, leaving mid-call, late answers, control characters)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from devsim.mcp import Prop, Tool
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device
from tests.relay.mcp_device import MCP_HELLO, McpDevice
from tests.relay.test_api import scrape, value

MAC = "66:9C:4B:DA:13:EA"
CANONICAL = "669C4BDA13EA"
TOOLS = f"/api/v1/devices/{CANONICAL}/tools"


async def mcp_device(client: TestClient[Any, Any], **knobs: Any) -> McpDevice:
    dev = await Device.connect(client, device_id=MAC, hello=MCP_HELLO)
    return McpDevice(dev, **knobs).start()


async def tools_of(client: TestClient[Any, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """GET the tool list once the device has listed its tools (503 before)."""
    async with asyncio.timeout(timeout):
        while True:
            resp = await client.get(TOOLS)
            body: dict[str, Any] = await resp.json()
            if resp.status != 503:
                assert resp.status == 200, body
                return body
            assert body["errorType"] == "tools_unavailable"
            await asyncio.sleep(0.02)


async def call(
    client: TestClient[Any, Any], name: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    data = b"" if body is None else orjson.dumps(body)
    resp = await client.post(f"{TOOLS}/{name}", data=data)
    answer: dict[str, Any] = await resp.json()
    return resp.status, answer


async def test_setup_initializes_and_follows_next_cursor(make_relay: RelayFactory) -> None:
    client = await make_relay(
        mcp={"vision": {"url": "https://vision.example/explain", "token": "t"}}
    )
    emu = await mcp_device(client)
    listed = await tools_of(client)
    assert [t["name"] for t in listed["tools"]] == [t.name for t in emu.tools]
    assert listed["server_info"] == {"name": "bread-compact-wifi", "version": "1.6.2"}
    assert listed["device_id"] == CANONICAL
    assert listed["dropped"] == 0
    volume = next(t for t in listed["tools"] if t["name"] == "self.audio_speaker.set_volume")
    assert volume["inputSchema"]["properties"]["volume"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
    }
    init, *pages = emu.requests
    assert init["method"] == "initialize"
    assert type(init["id"]) is int
    assert init["params"]["capabilities"] == {
        "vision": {"url": "https://vision.example/explain", "token": "t"}
    }
    # Two pages: the second starts at the tool the first could not hold.
    assert [p["method"] for p in pages] == ["tools/list", "tools/list"]
    assert pages[0]["params"] == {"cursor": ""}
    assert pages[1]["params"]["cursor"] in {t.name for t in emu.tools[1:]}
    assert len({r["id"] for r in emu.requests}) == 3
    assert all(type(r["id"]) is int for r in pages)
    samples = await scrape(client)
    assert value(samples, "relay_mcp_sessions_total", result="ready") == 1


async def test_call_runs_the_tool_and_answers_its_result(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client)
    await tools_of(client)
    status, answer = await call(
        client, "self.audio_speaker.set_volume", {"arguments": {"volume": 30}}
    )
    assert status == 200, answer
    assert answer["delivered"] is True
    assert answer["is_error"] is False
    assert answer["result"] == {"content": [{"type": "text", "text": "true"}], "isError": False}
    assert emu.volume == 30
    sent = emu.calls()[-1]
    assert sent["params"] == {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}}
    # An empty body calls with no arguments.
    status, answer = await call(client, "self.get_device_status")
    assert status == 200
    assert orjson.loads(answer["result"]["content"][0]["text"])["audio_speaker"] == {"volume": 30}
    samples = await scrape(client)
    assert value(samples, "relay_tool_calls_total", via="api", result="ok") == 2
    assert value(samples, "relay_tool_call_seconds_count") == 2


async def test_device_error_is_200_with_is_error(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client)
    await tools_of(client)
    status, answer = await call(client, "self.audio_speaker.set_volume", {"arguments": {}})
    assert status == 200
    assert answer["delivered"] is True
    assert answer["is_error"] is True
    assert answer["error"] == {"code": "device_error", "message": "Missing valid argument: volume"}
    assert emu.volume == 50
    samples = await scrape(client)
    assert value(samples, "relay_tool_calls_total", via="api", result="device_error") == 1


async def test_unknown_tool_is_404_and_never_reaches_the_device(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client)
    await tools_of(client)
    status, answer = await call(client, "self.reboot")
    assert status == 404
    assert answer["errorType"] == "unknown_tool"
    assert answer["delivered"] is False
    assert emu.calls() == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[1]", "JSON object"),
        (b'{"arguments":[1]}', "arguments"),
        (b'{"timeout_s":0}', "timeout_s"),
        (b'{"timeout_s":true}', "timeout_s"),
        (b"{", "not JSON"),
    ],
)
async def test_bad_call_body_is_400(make_relay: RelayFactory, body: bytes, fragment: str) -> None:
    client = await make_relay()
    emu = await mcp_device(client)
    await tools_of(client)
    resp = await client.post(f"{TOOLS}/self.get_device_status", data=body)
    assert resp.status == 400
    assert fragment in (await resp.json())["error"]
    assert emu.calls() == []


async def test_device_without_mcp_is_409_and_gets_no_mcp(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client, device_id=MAC)  # a hello without features.mcp
    resp = await client.get(TOOLS)
    assert resp.status == 409
    assert (await resp.json())["errorType"] == "mcp_unsupported"
    status, answer = await call(client, "self.get_device_status")
    assert status == 409
    await dev.send({"type": "ping"})
    assert (await dev.recv())["type"] == "pong"  # nothing was sent before the pong


async def test_mcp_disabled_sends_nothing(make_relay: RelayFactory) -> None:
    client = await make_relay(mcp={"enabled": False})
    dev = await Device.connect(client, device_id=MAC, hello=MCP_HELLO)
    resp = await client.get(TOOLS)
    assert resp.status == 409
    await dev.send({"type": "ping"})
    assert (await dev.recv())["type"] == "pong"


async def test_offline_device_is_404(make_relay: RelayFactory) -> None:
    client = await make_relay()
    resp = await client.get(TOOLS)
    assert resp.status == 404
    assert (await resp.json())["errorType"] == "offline"
    status, answer = await call(client, "self.get_device_status")
    assert status == 404
    assert answer["reason"] == "offline"


async def test_silent_call_is_504_and_the_connection_goes_on(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client, silent={"tools/call"})
    await tools_of(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, answer = await call(client, "self.get_device_status", {"timeout_s": 0.3})
    elapsed = loop.time() - start
    assert status == 504
    assert answer["reason"] == "timeout"
    assert 0.25 <= elapsed < 3.0
    # Unaffected: keepalive, a chat turn, and the next call all work.
    await emu.dev.send({"type": "ping"})
    assert (await asyncio.wait_for(emu.others.get(), 5))["type"] == "pong"
    emu.silent.clear()
    status, answer = await call(client, "self.get_device_status")
    assert status == 200
    assert answer["is_error"] is False


async def test_late_answer_is_dropped_and_counted(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client, delay_s=0.6)
    await tools_of(client)
    status, _ = await call(
        client, "self.audio_speaker.set_volume", {"arguments": {"volume": 7}, "timeout_s": 0.2}
    )
    assert status == 504
    async with asyncio.timeout(5):
        while value(await scrape(client), "relay_mcp_messages_total", kind="late") < 1:
            await asyncio.sleep(0.05)
    assert emu.volume == 7  # the device did run it: 504 says "may still run"
    emu.delay_s = 0
    status, answer = await call(client, "self.get_device_status")
    assert status == 200  # the late answer did not answer this call


async def test_disconnect_mid_call_is_404_offline(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client, silent={"tools/call"})
    await tools_of(client)
    pending = asyncio.ensure_future(call(client, "self.get_device_status", {"timeout_s": 10}))
    async with asyncio.timeout(5):
        while not emu.calls():
            await asyncio.sleep(0.01)
    await emu.dev.ws.close()
    status, answer = await asyncio.wait_for(pending, 5)
    assert status == 404
    assert answer["reason"] == "offline"
    samples = await scrape(client)
    assert value(samples, "relay_tool_calls_total", via="api", result="offline") == 1


async def test_wrong_ids_leave_tools_unavailable_and_are_counted(make_relay: RelayFactory) -> None:
    client = await make_relay(mcp={"timeout_s": 0.3})
    emu = await mcp_device(client, id_offset=1000)
    async with asyncio.timeout(5):
        while value(await scrape(client), "relay_mcp_sessions_total", result="unavailable") < 1:
            await asyncio.sleep(0.05)
    resp = await client.get(TOOLS)
    assert resp.status == 503
    samples = await scrape(client)
    assert value(samples, "relay_mcp_messages_total", kind="unknown_id") == 1
    await emu.dev.send({"type": "ping"})
    assert (await asyncio.wait_for(emu.others.get(), 5))["type"] == "pong"


async def test_malformed_jsonrpc_is_counted_and_harmless(make_relay: RelayFactory) -> None:
    client = await make_relay()
    emu = await mcp_device(client)
    await tools_of(client)
    for payload in (
        b'"text"',
        {"jsonrpc": "1.0", "id": 1, "result": {}},
        {"jsonrpc": "2.0", "id": "1", "result": {}},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "error": "bad"},
        {"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {"newState": "idle"}},
    ):
        await emu.send_payload(payload)
    await emu.dev.send({"type": "ping"})
    assert (await asyncio.wait_for(emu.others.get(), 5))["type"] == "pong"  # no error before it
    samples = await scrape(client)
    for kind in ("not_jsonrpc", "bad_id", "no_result", "bad_error", "notification"):
        assert value(samples, "relay_mcp_messages_total", kind=kind) >= 1, kind
    status, _ = await call(client, "self.get_device_status")
    assert status == 200


def _many(n: int, description: str = "") -> list[Tool]:
    return [
        Tool(f"self.t{i}", description, {"x": Prop("integer", 0, 9)}, lambda a: True)
        for i in range(n)
    ]


async def test_ten_thousand_tools_are_capped_and_counted(make_relay: RelayFactory) -> None:
    client = await make_relay(mcp={"max_tools": 100})
    emu = await mcp_device(client, tools=_many(10_000))
    listed = await tools_of(client, timeout=10)
    assert len(listed["tools"]) == 100
    assert listed["dropped"] > 0
    samples = await scrape(client)
    assert value(samples, "relay_mcp_tools_dropped_total", reason="max_tools") == listed["dropped"]
    assert len([r for r in emu.requests if r["method"] == "tools/list"]) < 5  # stopped early


async def test_ten_megabyte_list_is_capped_by_size(make_relay: RelayFactory) -> None:
    client = await make_relay(mcp={"max_list_bytes": 64 * 1024, "max_tools": 100_000})
    # 1,600 tools of 6.5 KB: 10 MB in pages of one tool each.
    emu = await mcp_device(client, tools=_many(1600, "d" * 6500))
    listed = await tools_of(client, timeout=10)
    assert 0 < len(orjson.dumps(listed["tools"])) <= 64 * 1024
    samples = await scrape(client)
    assert value(samples, "relay_mcp_tools_dropped_total", reason="max_bytes") >= 1
    assert len([r for r in emu.requests if r["method"] == "tools/list"]) < 20


async def test_control_characters_never_reach_the_log_raw(
    make_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_relay()
    evil = "evil\n[forged] line\x1b[31m"
    emu = await mcp_device(
        client, server_name=evil, tools=[Tool(f"self.{evil}", "", {}, lambda a: 1)]
    )
    listed = await tools_of(client)
    assert listed["tools"][0]["name"] == f"self.{evil}"  # the API gives it as it is, in JSON
    status, _ = await call(client, "self.nope\nx")
    assert status == 404
    await emu.send_payload({"jsonrpc": "2.0", "method": evil})
    await emu.send_payload({"jsonrpc": "2.0", "id": 99, "error": {"message": evil}})
    await emu.dev.send({"type": "ping"})
    await asyncio.wait_for(emu.others.get(), 5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("evil\\n[forged]" in m for m in messages), messages
    assert not any("\n" in m or "\x1b" in m for m in messages)
