"""The tools API across nodes (docs/protocol.md §3.2): two relays on one private
redis-server; a device on relay A is listed and called through relay B, which forwards the
request through A's inbox, with answers as truthful as a push's."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device
from tests.relay.mcp_device import MCP_HELLO, McpDevice
from tests.relay.redis_server import (  # noqa: F401 (pytest finds the fixture by name)
    RedisServer,
    redis_server_fixture,
)
from tests.relay.test_api import scrape, value
from tests.relay.test_mcp import CANONICAL, MAC, TOOLS, tools_of


async def two_relays(
    make_relay: RelayFactory, redis_server: RedisServer
) -> tuple[TestClient[Any, Any], TestClient[Any, Any]]:
    def node(name: str) -> dict[str, Any]:
        return {"url": redis_server.url, "node_id": name, "heartbeat_s": 1, "presence_ttl_s": 5}

    return await make_relay(redis=node("A")), await make_relay(redis=node("B"))


async def call_via(
    client: TestClient[Any, Any], name: str, body: Any
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"{TOOLS}/{name}", data=orjson.dumps(body))
    answer: dict[str, Any] = await resp.json()
    return resp.status, answer


async def test_list_and_call_through_another_node(
    make_relay: RelayFactory, redis_server: RedisServer
) -> None:
    a, b = await two_relays(make_relay, redis_server)
    emu = McpDevice(await Device.connect(a, device_id=MAC, hello=MCP_HELLO)).start()
    on_a = await tools_of(a)
    on_b = await tools_of(b)
    assert on_b["node"] == "A"
    assert on_b["tools"] == on_a["tools"]
    assert len(on_b["tools"]) == len(emu.tools)
    assert on_b["device_id"] == CANONICAL
    status, answer = await call_via(
        b, "self.audio_speaker.set_volume", {"arguments": {"volume": 80}}
    )
    assert status == 200, answer
    assert answer["delivered"] is True
    assert answer["node"] == "A"
    assert answer["result"]["content"] == [{"type": "text", "text": "true"}]
    assert emu.volume == 80
    status, answer = await call_via(
        b, "self.audio_speaker.set_volume", {"arguments": {"volume": 101}}
    )
    assert status == 200
    assert answer["is_error"] is True
    assert answer["error"]["message"] == "Value is out of range"
    status, answer = await call_via(b, "self.nope", {})
    assert status == 404
    assert answer["errorType"] == "unknown_tool"
    # Counted where the device is.
    assert value(await scrape(a), "relay_tool_calls_total", via="api", result="ok") == 1


async def test_timeout_and_disconnect_through_another_node(
    make_relay: RelayFactory, redis_server: RedisServer
) -> None:
    a, b = await two_relays(make_relay, redis_server)
    emu = McpDevice(
        await Device.connect(a, device_id=MAC, hello=MCP_HELLO), silent={"tools/call"}
    ).start()
    await tools_of(b)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, answer = await call_via(b, "self.get_device_status", {"timeout_s": 0.3})
    assert status == 504
    assert answer["reason"] == "timeout"
    assert answer["node"] == "A"  # the holder's own timeout, not the hop's
    assert loop.time() - start < 3.0
    pending = asyncio.ensure_future(call_via(b, "self.get_device_status", {"timeout_s": 10}))
    async with asyncio.timeout(5):
        while len(emu.calls()) < 2:
            await asyncio.sleep(0.01)
    await emu.dev.ws.close()
    status, answer = await asyncio.wait_for(pending, 5)
    assert status == 404
    assert answer["reason"] == "offline"


async def test_device_without_mcp_and_unknown_device_through_another_node(
    make_relay: RelayFactory, redis_server: RedisServer
) -> None:
    a, b = await two_relays(make_relay, redis_server)
    await Device.connect(a, device_id=MAC)
    resp = await b.get(TOOLS)
    assert resp.status == 409
    assert (await resp.json())["node"] == "A"
    resp = await b.get("/api/v1/devices/0000AAAA0000/tools")
    assert resp.status == 404
    assert (await resp.json())["reason"] == "offline"


async def test_redis_away_is_503_on_the_other_node(
    make_relay: RelayFactory, redis_server: RedisServer
) -> None:
    a, b = await two_relays(make_relay, redis_server)
    McpDevice(await Device.connect(a, device_id=MAC, hello=MCP_HELLO)).start()
    await tools_of(b)
    await redis_server.kill()
    async with asyncio.timeout(10):
        while True:
            resp = await b.get(TOOLS)
            if resp.status == 503:
                body = await resp.json()
                break
            await asyncio.sleep(0.05)
    assert body["reason"] == "redis_unavailable"
    assert (await tools_of(a))["node"] == "A"  # the holding node still answers for its device
