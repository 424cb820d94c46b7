"""JSON nested beyond the limit (protocol.jsonutil.MAX_DEPTH) at every edge: a device frame
gets a `too_deep` error and its connection stays; simulate and push answer 400 with a hint."""

from __future__ import annotations

import orjson
import pytest

from protocol.jsonutil import MAX_DEPTH
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness

MAC = "66:9C:4B:DA:13:EA"
DEEP = 1000  # passes orjson (whose own limit is 1024); the stdlib's scanner overflowed on it


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("mtype", ["custom", "mcp"])
async def test_deep_device_frame_gets_an_error_and_the_connection_stays(
    make_relay: RelayFactory, fake: FakeBusiness, mtype: str
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.ws.send_str(
        f'{{"session_id":"{dev.session_id}","type":"{mtype}","payload":{{"a":{nest(DEEP)}}}}}'
    )
    err = await dev.recv()
    assert (err["type"], err["code"], err["session_id"]) == ("error", "too_deep", dev.session_id)
    assert "64 levels" in err["message"]
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}
    assert fake.bodies == []  # nothing was asked of the business
    metrics = await (await client.get("/metrics")).text()
    assert 'relay_protocol_errors_total{code="too_deep"} 1.0' in metrics


async def test_deep_frame_before_hello_gets_an_error(make_relay: RelayFactory) -> None:
    client = await make_relay()
    ws = await client.ws_connect("/xiaozhi/v1/", headers={"Device-Id": "d-deep"})
    await ws.send_str('{"type":"hello","x":' + nest(DEEP) + "}")
    err = orjson.loads((await ws.receive(timeout=5)).data)
    assert (err["type"], err["code"]) == ("error", "too_deep")
    await ws.send_str('{"type":"hello"}')
    assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
    await ws.close()


async def test_a_payload_at_the_limit_reaches_the_business(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    inner = nest(MAX_DEPTH - 2)  # in payload.a, inside the frame: MAX_DEPTH levels in all
    payload = f'{{"a":{inner},"details":{{"session_id":"{dev.session_id}"}}}}'
    await dev.ws.send_str(f'{{"type":"custom","payload":{payload}}}')
    got = await dev.recv()
    assert got["type"] == "custom"
    assert fake.bodies == [payload.encode()]


@pytest.mark.parametrize(
    "body",
    [
        '{"device_id":"' + MAC + '","text":"hi","x":' + nest(DEEP) + "}",
        '{"device_id":"' + MAC + '","custom":{"type":"get","d":' + nest(DEEP) + "}}",
        '{"device_id":"' + MAC + '","custom":' + nest(MAX_DEPTH) + "}",
    ],
)
async def test_deep_simulate_body_is_400_with_a_hint(make_relay: RelayFactory, body: str) -> None:
    client = await make_relay()
    resp = await client.post("/api/v1/simulate", data=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["errorType"] == "too_deep"
    assert "64 levels" in answer["error"]
    assert "64 levels deep" in answer["hint"]


@pytest.mark.parametrize(
    "body",
    [
        '{"command":{"type":"command","event":"message","details":' + nest(DEEP) + "}}",
        '{"device":{"type":"alert","x":' + nest(DEEP) + "}}",
        '{"speak":"hi","voice":{"x":' + nest(DEEP) + "}}",
    ],
)
async def test_deep_push_is_400_with_a_hint_and_nothing_reaches_the_device(
    make_relay: RelayFactory, body: str
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    resp = await client.post("/api/v1/devices/" + MAC + "/messages", data=body)
    assert resp.status == 400
    answer = await resp.json()
    assert (answer["errorType"], answer["hint"]) == (
        "too_deep",
        f"nest arrays and objects at most {MAX_DEPTH} levels deep",
    )
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # nothing was pushed before it
