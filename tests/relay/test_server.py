"""Serving: graceful drain on SIGTERM, and several worker processes on one port."""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from relay.run.server import drain
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, echo_script, open_stream, session_of, sse
from tests.relay.test_cli import LIGHT_SPEECH, spawn_relay, stop, wait_http
from tests.relay.test_simulate import closed_port

# Bounds on what a loaded machine may stretch and no test here measures (a reply, a drain's
# end, an exit): generous, so that a failure means the behaviour, not the load.
BOUND_S = 60.0


def slow_answer(delay_s: float) -> Any:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        sid = session_of(body)
        await asyncio.sleep(delay_s)
        await resp.write(sse({"event": "message", "type": "data", "session_id": sid}))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    return script


async def test_drain_lets_the_turn_finish_then_closes_1001(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    fake.script = slow_answer(0.5)
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(
        {
            "session_id": dev.session_id,
            "type": "custom",
            "payload": {"type": "report", "details": {"session_id": dev.session_id}},
        }
    )
    await asyncio.sleep(0.05)  # the request is with the business
    draining = asyncio.ensure_future(drain(client.app, timeout_s=5.0))
    await asyncio.sleep(0.05)
    assert (await client.get("/readyz")).status == 503
    refused = await client.get("/xiaozhi/v1/", headers={"Device-Id": "late"})
    assert refused.status == 503
    assert (await refused.json())["errorType"] == "draining"
    got = [(await dev.recv())["payload"]["business_response"]["event"] for _ in range(2)]
    assert got == ["message", "message_end"]  # the turn in flight finished
    msg = await dev.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == 1001
    await asyncio.wait_for(draining, 5)


async def test_drain_timeout_cuts_a_turn_that_does_not_finish(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    fake.script = slow_answer(30)
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(
        {
            "session_id": dev.session_id,
            "type": "custom",
            "payload": {"type": "report", "details": {"session_id": dev.session_id}},
        }
    )
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    draining = asyncio.ensure_future(drain(client.app, timeout_s=0.3))
    msg = await dev.ws.receive(timeout=5)  # a device keeps reading, as firmware does
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == 1001
    assert loop.time() - start < 2
    await asyncio.wait_for(draining, 10)


async def test_two_workers_share_a_port_and_merge_metrics() -> None:
    port = closed_port()
    # The light speech pair: each worker would otherwise load Kokoro and Whisper at start.
    relay = await spawn_relay(port, "--workers", "2", env=LIGHT_SPEECH)
    base = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"{base}/healthz", relay)
            for i in range(12):  # new TCP connections: the kernel spreads them over workers
                async with aiohttp.ClientSession() as one:
                    ws = await one.ws_connect(f"{base}/xiaozhi/v1/", headers={"Device-Id": f"w{i}"})
                    await ws.send_str('{"type":"hello"}')
                    reply = orjson.loads((await ws.receive(timeout=5)).data)
                    assert reply["type"] == "hello"
                    await ws.close()
            async with asyncio.timeout(10):
                while True:  # the count is merged over both workers whichever answers
                    text = await (await http.get(f"{base}/metrics")).text()
                    if "relay_connections_opened_total 12.0" in text:
                        break
                    await asyncio.sleep(0.1)
            async with asyncio.timeout(15):
                while len(pids) < 2:  # both workers answer on the one port
                    async with aiohttp.ClientSession() as one:
                        resp = await one.get(f"{base}/healthz")
                        pids.add(int(resp.headers["X-Relay-Worker"]))
            # Each worker's CPU, memory and descriptors show apart (by pid), whichever answers;
            # the build information once.
            async with asyncio.timeout(20):
                while True:
                    text = await (await http.get(f"{base}/metrics")).text()
                    rss = re.findall(
                        r'^relay_process_resident_memory_bytes\{pid="(\d+)"\} (\S+)', text, re.M
                    )
                    if {int(pid) for pid, _ in rss} == pids:
                        break
                    await asyncio.sleep(0.5)
            assert all(float(value) > 1e6 for _, value in rss)
            fds = re.findall(r'^relay_process_open_fds\{pid="\d+"\} (\S+)', text, re.M)
            assert len(fds) == 2
            assert all(float(v) > 0 for v in fds)
            assert len(re.findall(r"^relay_build_info\{", text, re.M)) == 1
    finally:
        code = await stop(relay)
    assert code == 0


async def test_sigterm_drains_a_turn_in_flight_and_exits_0(
    business: tuple[FakeBusiness, TestServer],
) -> None:
    # The business holds its answer until the relay drains: the turn is in flight when the
    # SIGTERM is handled however slowly a loaded machine runs the two (sleeps raced there).
    fake, server = business
    asked, release = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        asked.set()
        await release.wait()
        return await echo_script(request, body)

    fake.script = held
    relay_port = closed_port()
    relay = await spawn_relay(relay_port, business_port=server.port, env=LIGHT_SPEECH)
    base = f"http://127.0.0.1:{relay_port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"{base}/healthz", relay)
            ws = await http.ws_connect(f"{base}/xiaozhi/v1/", headers={"Device-Id": "d-term"})
            await ws.send_str('{"type":"hello"}')
            sid = orjson.loads((await ws.receive(timeout=BOUND_S)).data)["session_id"]
            await ws.send_str(
                orjson.dumps(
                    {
                        "session_id": sid,
                        "type": "custom",
                        "payload": {"type": "chat", "details": {"msg": "hi", "session_id": sid}},
                    }
                ).decode()
            )
            async with asyncio.timeout(BOUND_S):
                await asked.wait()
            relay.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as other, asyncio.timeout(BOUND_S):
                while (await other.get(f"{base}/readyz")).status != 503:
                    await asyncio.sleep(0.05)
            release.set()
            seen: list[str] = []
            async with asyncio.timeout(BOUND_S):  # espeak-ng: well within drain_timeout_s
                while True:
                    msg = await ws.receive()
                    if msg.type == WSMsgType.TEXT:
                        m = orjson.loads(msg.data)
                        if m["type"] == "custom":
                            seen.append(m["payload"]["business_response"]["event"])
                        else:
                            seen.append(m.get("state") or m["type"])
                    elif msg.type != WSMsgType.BINARY:
                        break
            assert ws.close_code == 1001
            assert "message_end" in seen
            assert seen[-1] == "stop"  # the answer was spoken to its end before the close
        async with asyncio.timeout(BOUND_S):
            assert await relay.wait() == 0
    finally:
        release.set()
        await stop(relay)
