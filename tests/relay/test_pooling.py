"""The business client reuses pooled connections across requests."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, echo_script, is_end


async def test_sequential_requests_reuse_one_connection(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    peers: list[Any] = []

    async def record(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        resp = await echo_script(request, body)
        await asyncio.sleep(0.02)  # the end of the response comes a moment after message_end
        return resp

    fake.script = record
    client = await make_relay()
    dev = await Device.connect(client)
    for _ in range(3):
        await dev.send(
            {
                "session_id": dev.session_id,
                "type": "custom",
                "payload": {"type": "report", "details": {"session_id": dev.session_id}},
            }
        )
        await dev.recv_until(is_end)
        await asyncio.sleep(0.06)  # past the end of that response: its connection is idle
    assert len(peers) == 3
    assert peers[0] == peers[1] == peers[2], f"a new TCP connection per business request: {peers}"
