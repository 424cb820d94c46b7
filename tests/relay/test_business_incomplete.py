"""A business answer that ends without `message_end` (docs/protocol.md §2.7): the device is
told `business_incomplete`, a chat turn ends with `tts stop`, and the fault is counted.

Each way such an answer comes about is driven by the fake business (a real aiohttp server on
loopback): everything it sent was foreign to the session, its body was gzip although the
relay asked for `identity`, or it ended its response in the middle of an event.
"""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import (
    Device,
    FakeBusiness,
    is_end,
    is_tts_stop,
    open_stream,
    session_of,
    sse,
)
from tests.relay.test_business_failures import (
    FOREIGN,
    assert_envelope,
    assert_error,
    command,
    custom,
    next_request_works,
    outcome,
    responses,
    wait_metric,
)


async def all_foreign(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    resp = await open_stream(request)
    await resp.write(sse(command(FOREIGN, 1)))
    await resp.write(sse({"event": "message_end", "session_id": FOREIGN}))
    return resp  # every event was for another session: dropped, none is this one's end


async def gzip_body(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    # The relay sends Accept-Encoding: identity; this business compresses all the same.
    sid = session_of(body)
    data = gzip.compress(sse(command(sid, 1)) + sse({"event": "message_end", "session_id": sid}))
    headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
    return web.Response(body=data, headers=headers)


async def cut_mid_event(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    sid = session_of(body)
    resp = await open_stream(request)
    await resp.write(sse(command(sid, 1)))
    end = sse({"event": "message_end", "session_id": sid})
    await resp.write(end[: len(end) // 2])  # the response ends inside the event's JSON
    return resp


# (script, the events of this session the device still receives before the error)
WAYS = {
    "all_foreign": (all_foreign, 0),
    "gzip_body": (gzip_body, 0),
    "cut_mid_event": (cut_mid_event, 1),
}


async def device_facing(
    way: str, make_relay: RelayFactory, fake: FakeBusiness
) -> tuple[TestClient[Any, Any], Device, int]:
    """A relay whose business answers the `way` given, a device on it, and how many of the
    device's own events that answer still delivers."""
    script, delivered = WAYS[way]
    fake.script = script
    client = await make_relay()
    return client, await Device.connect(client), delivered


@pytest.mark.parametrize("way", list(WAYS))
async def test_passthrough_without_message_end_is_business_incomplete(
    make_relay: RelayFactory, fake: FakeBusiness, way: str
) -> None:
    client, dev, delivered = await device_facing(way, make_relay, fake)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    for m in msgs[:-1]:
        assert_envelope(m, dev, "report")
    assert responses(msgs[:-1]) == [command(dev.session_id, 1)] * delivered
    assert_error(msgs[-1], dev, "business_incomplete")
    await wait_metric(client, outcome("incomplete"), 1)
    await next_request_works(dev, fake)


@pytest.mark.parametrize("way", list(WAYS))
async def test_chat_without_message_end_is_business_incomplete_then_tts_stop(
    make_relay: RelayFactory, fake: FakeBusiness, way: str
) -> None:
    client, dev, delivered = await device_facing(way, make_relay, fake)
    detect = {"type": "listen", "state": "detect", "text": "hi"}
    await dev.send({"session_id": dev.session_id, **detect})
    msgs = await dev.recv_until(is_tts_stop)
    assert msgs[0]["type"] == "stt"
    error, stop = msgs[-2:]
    assert len(msgs) == 3 + delivered
    assert_error(error, dev, "business_incomplete", request_type="chat")
    assert stop == {
        "session_id": dev.session_id,
        "type": "tts",
        "state": "stop",
        "is_aborted": False,
    }
    await wait_metric(client, outcome("incomplete"), 1)
    await next_request_works(dev, fake)
