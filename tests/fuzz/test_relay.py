"""Fuzzing a running relay over its real sockets, from a fixed seed: bad device frames get an
error or nothing and never cost the connection, bad API bodies get a 4xx with a hint and never
a 500, nothing logs a traceback, and the relay still serves afterwards."""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tests.fuzz.gen import Hostile
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness

MAC = "66:9C:4B:DA:13:EA"
FRAMES_PER_DEVICE = 600
BODIES = 400
# What the relay may send a device (docs/protocol.md §1.5); `error` answers a bad frame.
DEVICE_TYPES = {"hello", "error", "pong", "stt", "tts", "llm", "custom", "mcp"}


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """No record at ERROR or with a traceback, but those of the fake business (it runs in
    this process too) complaining that the relay hung up on an answer it cancelled."""
    bad = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if (r.exc_info is not None or r.levelno >= logging.ERROR) and not _from_fake(r)
    ]
    assert bad == []


def _from_fake(record: logging.LogRecord) -> bool:
    tb = record.exc_info[2] if record.exc_info else None
    return any(frame.filename.endswith("fakes.py") for frame in traceback.extract_tb(tb))


async def still_serving(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    ws = await client.ws_connect("/xiaozhi/v1/", headers={"Device-Id": "after-the-fuzz"})
    await ws.send_str('{"type":"hello"}')
    assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
    await ws.send_str('{"type":"ping"}')
    assert orjson.loads((await ws.receive(timeout=5)).data) == {"type": "pong"}
    await ws.close()


async def until_pong(ws: Any) -> list[dict[str, Any]]:
    """Read up to the `pong` that answers our ping: every text must be a device message, and
    the connection must stay open."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                continue  # audio of an answer some fuzzed frame asked for
            assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, ws.close_code)
            m = orjson.loads(msg.data)
            assert m["type"] in DEVICE_TYPES, m
            if m["type"] == "error":
                assert isinstance(m["code"], str)
                assert isinstance(m["message"], str)
            got.append(m)
            if m == {"type": "pong"}:
                return got


async def hello(ws: Any, gen: Hostile) -> str:
    """Fuzzed hellos until one is taken (a refused hello gets an error, the relay waits)."""
    for _ in range(5):
        await ws.send_str(gen.hello_text())
        reply = orjson.loads((await ws.receive(timeout=5)).data)
        if reply["type"] == "hello":
            session_id: str = reply["session_id"]
            return session_id
        assert reply["type"] == "error", reply
    await ws.send_str('{"type":"hello"}')
    reply = orjson.loads((await ws.receive(timeout=5)).data)
    assert reply["type"] == "hello", reply
    session_id = reply["session_id"]
    return session_id


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_bad_device_frames_never_cost_the_connection(
    make_relay: RelayFactory, fake: FakeBusiness, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    client = await make_relay()
    gen = Hostile(seed=20261204 + version)
    headers = {"Device-Id": f"fuzz-{version}", "Protocol-Version": str(version)}
    ws = await client.ws_connect("/xiaozhi/v1/", headers=headers)
    for _ in range(8):  # binary frames before the hello: dropped, or `not_ready` for JSON
        await ws.send_bytes(gen.binary_frame(version))
    await ws.send_str('{"type":"listen"}')  # a marker: the one `missing_field` error
    async with asyncio.timeout(10):
        while orjson.loads((await ws.receive()).data).get("code") != "missing_field":
            pass
    sid = await hello(ws, gen)
    errors = 0
    for i in range(FRAMES_PER_DEVICE):
        if i % 3 == 2:
            await ws.send_bytes(gen.binary_frame(version))
        else:
            frame = gen.text_frame(sid)
            # A text frame of any bytes, invalid UTF-8 included (send_str would refuse it).
            data = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
            await ws._writer.send_frame(data, WSMsgType.TEXT)
        if i % 10 == 9:
            await ws.send_str('{"type":"ping"}')
            errors += sum(m["type"] == "error" for m in await until_pong(ws))
    assert errors > 0  # the run did send broken frames
    assert not ws.closed
    await ws.close()
    await still_serving(client)
    no_tracebacks(caplog)


async def test_bad_api_bodies_get_a_4xx_with_a_hint(
    make_relay: RelayFactory, fake: FakeBusiness, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_relay()
    gen = Hostile(seed=4242)
    dev = await client.ws_connect("/xiaozhi/v1/", headers={"Device-Id": MAC})
    await dev.send_str('{"type":"hello"}')
    await dev.receive(timeout=5)
    statuses: dict[int, int] = {}
    paths = {"simulate": "/api/v1/simulate", "push": f"/api/v1/devices/{MAC}/messages"}
    for i in range(BODIES):
        form = ("simulate", "push")[i % 2]
        async with client.post(paths[form], data=gen.api_body(form)) as resp:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status in (200, 400, 404, 409, 413), resp.status
            if resp.status >= 400:
                answer = await resp.json()
                assert set(answer) >= {"error", "errorType", "hint"}, answer
            if resp.status == 409:  # the device is connected and reading: only this is true
                assert answer["reason"] == "not_supported", answer
            # A 200 simulate stream is left at once: the relay must take the client leaving.
    assert statuses.get(400, 0) > BODIES // 2
    assert statuses.get(200, 0) > 0  # some were valid: the run reached past validation
    assert not dev.closed
    await dev.close()
    await still_serving(client)
    no_tracebacks(caplog)
