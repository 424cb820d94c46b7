"""The business client reuses pooled connections across requests."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
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


# ---- idle pooled connections are reaped (no CLOSE-WAIT left behind) --------------------

BURST = 40
TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT", "06": "TIME_WAIT", "04": "FIN_WAIT1"}


def own_sockets_to(port: int) -> Counter[str]:
    """This process's TCP sockets whose remote end is loopback `port`, by state: read from
    /proc/net/tcp{,6}, kept when their inode is one of our open descriptors."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:
                states[TCP_STATES.get(state, state)] += 1
    return states


async def burst_through(client: Any, fake: FakeBusiness) -> None:
    """BURST simultaneous pass-through requests: the business answers none until all have
    arrived, so each holds its own pooled connection, which is idle once they are done."""
    arrived = asyncio.Event()

    async def together(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if len(fake.bodies) >= BURST:
            arrived.set()
        async with asyncio.timeout(20):
            await arrived.wait()
        return await echo_script(request, body)

    fake.script = together

    async def one(i: int) -> None:
        payload = {"type": "report", "details": {"session_id": f"burst-{i}"}}
        resp = await client.post("/api/v1/simulate", json={"device_id": f"d{i}", "custom": payload})
        assert resp.status == 200
        assert '"event":"message_end"' in await resp.text()

    await asyncio.gather(*(one(i) for i in range(BURST)))


async def wait_no_sockets_to(port: int, timeout_s: float) -> tuple[float, Counter[str]]:
    """Seconds until this process holds no socket to `port`, and the most it held at once
    in each state meanwhile; fails after `timeout_s`."""
    loop = asyncio.get_running_loop()
    start, most = loop.time(), Counter[str]()
    while states := own_sockets_to(port):
        most |= states
        assert loop.time() - start < timeout_s, f"still open after {timeout_s}s: {states}"
        await asyncio.sleep(0.05)
    return loop.time() - start, most


async def test_connections_the_business_closed_are_reaped_without_a_next_request(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    fake = FakeBusiness()
    server = await aiohttp_server(fake.app(), keepalive_timeout=0.2)  # closes idle ones soon
    url = str(server.make_url("/chat"))
    # The relay's own keep-alive is long: only noticing the server's close can free them.
    client = await make_relay(business_overrides={"url": url, "keepalive_timeout_s": 60})
    await burst_through(client, fake)
    assert sum(own_sockets_to(server.port).values()) >= BURST // 2  # pooled, idle
    took, most = await wait_no_sockets_to(server.port, timeout_s=5.0)
    assert most["CLOSE_WAIT"] > 0 or took < 0.5, most  # they were closed by the server first
    # The pool is still usable: the next request opens a fresh connection.
    fake.script = echo_script
    payload = {"type": "report", "details": {"session_id": "after"}}
    resp = await client.post("/api/v1/simulate", json={"device_id": "d", "custom": payload})
    assert '"event":"message_end"' in await resp.text()


async def test_idle_connections_are_closed_after_the_keepalive_timeout(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    fake = FakeBusiness()
    server = await aiohttp_server(fake.app(), keepalive_timeout=120)  # never closes them
    url = str(server.make_url("/chat"))
    client = await make_relay(business_overrides={"url": url, "keepalive_timeout_s": 1.5})
    await burst_through(client, fake)
    pooled = own_sockets_to(server.port)
    assert pooled["ESTABLISHED"] >= BURST // 2, pooled
    took, _most = await wait_no_sockets_to(server.port, timeout_s=8.0)
    assert took >= 0.5  # not before they had been idle for about the keep-alive timeout
