"""The simulate stream delivers every event of a long answer, holding a bounded backlog (the
turn waits for the client), and a SIGTERM drains it like a device's turn."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
from aiohttp import web

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness, open_stream, session_of, sse
from tests.relay.test_cli import LIGHT_SPEECH, spawn_business, spawn_relay, stop, wait_http
from tests.relay.test_simulate import SIMULATE, closed_port, parse_sse, responses

MAC = "66:9C:4B:DA:13:EA"
CUSTOM = {"device_id": MAC, "custom": {"type": "get", "details": {"session_id": "S1"}}}


def many_events(count: int, pad: int = 0) -> Any:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        sid = session_of(body)
        chunk = b"".join(
            sse({"event": "message", "type": "data", "session_id": sid, "n": i, "pad": "x" * pad})
            for i in range(count)
        )
        await resp.write(chunk)  # all at once: the relay reads them faster than it can write
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    return script


async def test_simulate_delivers_all_601_events(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    fake.script = many_events(601)
    client = await make_relay()
    resp = await client.post(SIMULATE, json=CUSTOM)
    assert resp.status == 200
    got = responses(parse_sse(await resp.text()))
    assert [e.get("n") for e in got[:-1]] == list(range(601))
    assert got[-1]["event"] == "message_end"


async def test_a_slow_simulate_client_gets_everything_with_a_bounded_backlog(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    # 3,000 events of 1 KiB, an outbox of 64: the client reads slowly, so the turn must wait
    # for it (a bounded backlog) rather than drop the stream when the outbox fills.
    fake.script = many_events(3000, pad=1024)
    client = await make_relay(server={"outbox_max": 64})
    events = 0
    async with client.post(SIMULATE, json=CUSTOM) as resp:
        assert resp.status == 200
        buf = b""
        async with asyncio.timeout(60):
            while chunk := await resp.content.read(16 * 1024):
                buf += chunk
                await asyncio.sleep(0.002)
        got = responses(parse_sse(buf.decode()))
        events = len(got)
        assert [e.get("n") for e in got[:-1]] == list(range(3000))
    assert events == 3001
    metrics = await (await client.get("/metrics")).text()
    assert "relay_outbox_overflow_total 0.0" in metrics


async def test_sigterm_drains_a_simulate_stream() -> None:
    # The business answers after 3 s: longer than the 1 s aiohttp gives handlers at shutdown,
    # shorter than [server] drain_timeout_s (30 s in config.toml).
    relay_port, business_port = closed_port(), closed_port()
    business = await spawn_business(business_port, "--chat-delay", "3")
    relay = await spawn_relay(relay_port, business_port=business_port, env=LIGHT_SPEECH)
    base = f"http://127.0.0.1:{relay_port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{business_port}/", business)
            await wait_http(http, f"{base}/healthz", relay)
            body = {"device_id": MAC, "text": "hello"}
            async with http.post(f"{base}{SIMULATE}", json=body) as resp:
                assert resp.status == 200
                first = await resp.content.readuntil(b"\n\n")  # the stt: the turn is running
                assert b'"stt"' in first
                relay.send_signal(signal.SIGTERM)
                # The drain's end is not measured here (drain_timeout_s bounds it in the relay):
                # generous, for a loaded machine.
                async with asyncio.timeout(90):
                    rest = await resp.content.read()
            events = parse_sse((first + rest).decode())
            assert any(e.get("event") == "message_end" for e in responses(events))
            last = [e.data for e in events if e.name == "message"][-1]
            assert (last["type"], last["state"], last["is_aborted"]) == ("tts", "stop", False)
        async with asyncio.timeout(60):
            assert await relay.wait() == 0
    finally:
        await stop(relay)
        await stop(business)
