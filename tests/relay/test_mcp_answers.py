"""Tool calls inside a business answer (docs/protocol.md §3.3): a business with
`device_tools = true` gets the device's tools in each chat request, answers with `tool_call`
events that run on the device in order, and gets each `tool_result` back; bad calls, loops,
a device without MCP, aborts and a device leaving mid-call never hang anything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from examples import business_service
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, open_stream, session_of, sse
from tests.relay.mcp_device import MCP_HELLO, McpDevice
from tests.relay.test_api import scrape, value
from tests.relay.test_mcp import MAC, tools_of

Calls = Callable[[dict[str, Any]], list[tuple[str, Any]]]


def tool_business(fake: FakeBusiness, calls: Calls) -> None:
    """A business that answers a chat with the tool calls `calls(body)` gives (name and
    arguments), and each `tool_result` with a chat sentence naming its outcome."""

    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        if body["type"] == "chat":
            for n, (name, arguments) in enumerate(calls(body)):
                details = {"call_id": f"c{n}", "name": name, "arguments": arguments}
                event = {"event": "message", "type": "tool_call", "session_id": sid}
                await resp.write(sse({**event, "details": details}))
        elif body["type"] == "tool_result":
            d = body["details"]
            said = "done" if "result" in d else d["error"]["code"]
            answer = {"answer": f"{d['call_id']} {said}."}
            await resp.write(
                sse({"event": "message", "type": "chat", "session_id": sid, "details": answer})
            )
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    fake.script = script


def bodies(fake: FakeBusiness, kind: str) -> list[dict[str, Any]]:
    found = [orjson.loads(b) for b in fake.bodies]
    return [b for b in found if b["type"] == kind]


async def turn_of(emu: McpDevice, text: str) -> list[dict[str, Any]]:
    """Type `text` on the device; every message up to the turn's `tts stop`."""
    await emu.dev.send({"type": "listen", "state": "detect", "text": text})
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while True:
            m = await emu.others.get()
            out.append(m)
            if m.get("type") == "tts" and m.get("state") == "stop":
                return out


def captions(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in msgs if m.get("state") == "sentence_start"]


async def tools_device(client: TestClient[Any, Any], **knobs: Any) -> McpDevice:
    emu = McpDevice(await Device.connect(client, device_id=MAC, hello=MCP_HELLO), **knobs)
    emu.start()
    await tools_of(client)
    return emu


async def test_louder_runs_the_volume_tool_and_speaks_the_result(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(fake, lambda b: [("self.audio_speaker.set_volume", {"volume": 90})])
    client = await make_relay(business_overrides={"device_tools": True})
    emu = await tools_device(client)
    msgs = await turn_of(emu, "louder")
    assert emu.volume == 90
    chat = bodies(fake, "chat")[0]
    assert [t["name"] for t in chat["details"]["tools"]] == [t.name for t in emu.tools]
    (result,) = bodies(fake, "tool_result")
    assert result["details"]["call_id"] == "c0"
    assert result["details"]["name"] == "self.audio_speaker.set_volume"
    assert result["details"]["result"]["content"] == [{"type": "text", "text": "true"}]
    assert result["details"]["session_id"] == emu.dev.session_id
    assert result["auth"] == {"device_id": "669C4BDA13EA"}
    assert captions(msgs) == ["c0 done."]
    # One message_end per request, each with its own request type (§2.4).
    ends = [m["payload"] for m in msgs if m.get("type") == "custom"]
    assert [e["original_request_type"] for e in ends] == ["chat", "tool_result"]
    assert all(e["business_response"]["event"] == "message_end" for e in ends)
    # The tool_call event itself is consumed, not passed to the device.
    assert not any(
        m.get("type") == "custom" and m["payload"]["business_response"].get("type") == "tool_call"
        for m in msgs
    )
    samples = await scrape(client)
    assert value(samples, "relay_tool_calls_total", via="answer", result="ok") == 1


async def test_calls_run_in_order_and_bad_ones_get_errors(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(
        fake,
        lambda b: [
            ("self.audio_speaker.set_volume", {"volume": 10}),
            ("self.reboot", {}),
            ("self.audio_speaker.set_volume", [1]),
            ("self.audio_speaker.set_volume", {}),
            ("self.audio_speaker.set_volume", {"volume": 20}),
        ],
    )
    client = await make_relay(
        business_overrides={"device_tools": True}, mcp={"max_calls_per_turn": 4}
    )
    emu = await tools_device(client)
    msgs = await turn_of(emu, "go")
    results = [r["details"] for r in bodies(fake, "tool_result")]
    assert [r["call_id"] for r in results] == ["c0", "c1", "c2", "c3", "c4"]
    assert "result" in results[0]
    assert results[1]["error"]["code"] == "unknown_tool"
    assert results[2]["error"]["code"] == "bad_arguments"
    assert results[3]["error"] == {
        "code": "device_error",
        "message": "Missing valid argument: volume",
    }
    assert results[4]["error"]["code"] == "too_many_calls"  # the fifth of at most four
    assert emu.volume == 10  # the fifth never ran
    assert [c["params"]["arguments"] for c in emu.calls()] == [{"volume": 10}, {}]
    assert captions(msgs) == [
        "c0 done.",
        "c1 unknown_tool.",
        "c2 bad_arguments.",
        "c3 device_error.",
        "c4 too_many_calls.",
    ]


async def test_device_without_mcp_gets_an_error_result(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(fake, lambda b: [("self.get_device_status", {})])
    client = await make_relay(business_overrides={"device_tools": True})
    dev = await Device.connect(client, device_id=MAC)
    await dev.send({"type": "listen", "state": "detect", "text": "status"})
    msgs = await dev.recv_until(lambda m: m.get("type") == "tts" and m.get("state") == "stop")
    assert bodies(fake, "chat")[0]["details"]["tools"] == []
    (result,) = bodies(fake, "tool_result")
    assert result["details"]["error"]["code"] == "mcp_unsupported"
    assert captions(msgs) == ["c0 mcp_unsupported."]


async def test_business_without_device_tools_gets_tool_calls_passed_through(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(fake, lambda b: [("self.get_device_status", {})])
    client = await make_relay()
    emu = await tools_device(client)
    msgs = await turn_of(emu, "status")
    assert "tools" not in bodies(fake, "chat")[0]["details"]
    assert bodies(fake, "tool_result") == []
    assert emu.calls() == []
    passed = [m["payload"]["business_response"] for m in msgs if m.get("type") == "custom"]
    assert passed[0]["type"] == "tool_call"


async def test_abort_cancels_the_pending_call(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    tool_business(fake, lambda b: [("self.get_device_status", {})])
    client = await make_relay(business_overrides={"device_tools": True})
    emu = await tools_device(client, delay_s=0.5)
    await emu.dev.send({"type": "listen", "state": "detect", "text": "status"})
    await asyncio.wait_for(emu.called.wait(), 10)
    await emu.dev.send({"type": "abort"})
    # The device answers after the abort: the reply is late, and no result is posted.
    async with asyncio.timeout(5):
        while value(await scrape(client), "relay_mcp_messages_total", kind="late") < 1:
            await asyncio.sleep(0.05)
    await emu.dev.send({"type": "ping"})
    while (await asyncio.wait_for(emu.others.get(), 5))["type"] != "pong":
        pass
    assert bodies(fake, "tool_result") == []


async def test_device_leaving_mid_call_tells_the_business(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(fake, lambda b: [("self.get_device_status", {})])
    client = await make_relay(business_overrides={"device_tools": True})
    emu = await tools_device(client, silent={"tools/call"})
    await emu.dev.send({"type": "listen", "state": "detect", "text": "status"})
    async with asyncio.timeout(10):
        while not emu.calls():
            await asyncio.sleep(0.01)
    await emu.dev.ws.close()
    async with asyncio.timeout(5):
        while not bodies(fake, "tool_result"):
            await asyncio.sleep(0.02)
    (result,) = bodies(fake, "tool_result")
    assert result["details"]["error"]["code"] == "offline"


async def test_notifications_reach_a_device_tools_business(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(business_overrides={"device_tools": True})
    emu = await tools_device(client)
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/state_changed",
        "params": {"newState": "idle"},
    }
    await emu.send_payload(note)
    async with asyncio.timeout(5):
        while not bodies(fake, "mcp_notification"):
            await asyncio.sleep(0.02)
    (body,) = bodies(fake, "mcp_notification")
    assert body["details"]["payload"] == note
    assert body["details"]["session_id"] == emu.dev.session_id
    assert body["auth"] == {"device_id": "669C4BDA13EA"}


async def test_a_new_utterance_cancels_the_pending_call(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    tool_business(
        fake, lambda b: [("self.get_device_status", {})] if b["details"]["msg"] == "one" else []
    )
    client = await make_relay(business_overrides={"device_tools": True})
    emu = await tools_device(client, delay_s=0.5)
    await emu.dev.send({"type": "listen", "state": "detect", "text": "one"})
    await asyncio.wait_for(emu.called.wait(), 10)
    msgs = await turn_of(emu, "two")  # the first turn is cut, the second one ends
    assert msgs[-1] == {
        "session_id": emu.dev.session_id,
        "type": "tts",
        "state": "stop",
        "is_aborted": False,
    }
    async with asyncio.timeout(5):
        while value(await scrape(client), "relay_mcp_messages_total", kind="late") < 1:
            await asyncio.sleep(0.05)
    assert [b["details"]["msg"] for b in bodies(fake, "chat")] == ["one", "two"]
    assert bodies(fake, "tool_result") == []


async def test_reference_business_turns_louder_into_the_volume_tool(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    reference = await aiohttp_server(business_service.make_app())
    client = await make_relay(
        business_overrides={"device_tools": True, "url": str(reference.make_url("/chat"))}
    )
    emu = await tools_device(client)
    msgs = await turn_of(emu, "大声一点")
    assert emu.volume == 80
    assert captions(msgs) == ["好的，音量已调到 80。"]
