"""Many devices on one relay against one business that interleaves everyone's answers with
events for other sessions (docs/protocol.md §2.3: an event never reaches another session)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, is_end, open_stream, session_of, sse
from tests.relay.test_business_failures import metric

DEVICES = 200
# Connects go in waves: a burst beyond the test server's listen backlog (128) loses SYNs,
# and each lost SYN costs a 1 s retransmit that tells nothing about the relay.
CONNECT_WAVE = 100


@dataclass
class Interleaver:
    """A business script: each answer is a few own events sent with random small delays,
    mixed with events carrying other live sessions' ids and made-up ids."""

    rng: random.Random = field(default_factory=lambda: random.Random(20240607))
    seen: list[str] = field(default_factory=list)  # session ids of requests received so far
    sent: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    injected: int = 0  # events sent with a session id other than the request's
    injected_live: int = 0  # of which carried another live device's session id
    requests: int = 0

    def foreign_id(self, own: str) -> str:
        others = [s for s in self.seen if s != own]
        if others and self.rng.random() < 0.7:
            self.injected_live += 1
            return self.rng.choice(others)
        return f"made-up-{self.rng.randrange(1 << 48):012x}"

    async def script(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        assert sid is not None
        if sid not in self.seen:
            self.seen.append(sid)
        self.requests += 1
        rnd = body["details"]["round"]
        count = self.rng.randint(2, 6)
        self.sent[sid].append(count)
        resp = await open_stream(request)
        for seq in range(count):
            await asyncio.sleep(self.rng.random() * 0.02)
            for _ in range(self.rng.randint(0, 2)):
                other = self.foreign_id(sid)
                foreign: dict[str, Any] = {"event": "message", "session_id": other}
                if self.rng.random() < 0.2:  # another session's end must not end ours
                    foreign["event"] = "message_end"
                else:
                    foreign |= {"type": "command", "details": {"foreign": True, "to": other}}
                await resp.write(sse(foreign))
                self.injected += 1
            own = {"event": "message", "type": "command", "session_id": sid}
            await resp.write(sse({**own, "details": {"seq": seq, "round": rnd}}))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp


@asynccontextmanager
async def wide_client(client: TestClient[Any, Any]) -> AsyncIterator[TestClient[Any, Any]]:
    """A second client on the relay's server without aiohttp's 100-connection pool limit
    (each open WebSocket holds one pooled connection)."""
    wide: TestClient[Any, Any] = TestClient(client.server, connector=aiohttp.TCPConnector(limit=0))
    await wide.start_server()  # already started: a no-op
    try:
        yield wide
    finally:
        await wide.close()


async def wait_metric(client: TestClient[Any, Any], sample: str, expected: float) -> None:
    value = -1.0
    try:
        async with asyncio.timeout(3):
            while (value := await metric(client, sample)) != expected:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{sample} = {value}, expected {expected}") from None


async def round_trip(dev: Device, rnd: int) -> list[dict[str, Any]]:
    """One custom request carrying the device's own session id; its answer, message_end last."""
    sid = dev.session_id
    payload = {"type": "report", "details": {"session_id": sid, "round": rnd}}
    await dev.send({"session_id": sid, "type": "custom", "payload": payload})
    return await dev.recv_until(is_end, timeout=15)


def check_answer(dev: Device, msgs: list[dict[str, Any]], rnd: int, count: int) -> None:
    """Exactly the device's own events, in order, message_end last, nothing foreign."""
    sid = dev.session_id
    events = [m["payload"]["business_response"] for m in msgs]
    for m, event in zip(msgs, events, strict=True):
        assert m["session_id"] == sid
        assert m["type"] == "custom"
        assert event["session_id"] == sid
    own = {"event": "message", "type": "command", "session_id": sid}
    assert events == [
        *({**own, "details": {"seq": seq, "round": rnd}} for seq in range(count)),
        {"event": "message_end", "session_id": sid},
    ]


async def run_devices(
    make_relay: RelayFactory, fake: FakeBusiness, rounds: int
) -> tuple[Interleaver, float, float]:
    """Connect DEVICES devices at once, run `rounds` round trips each concurrently, check
    every answer; return the script and the mismatch and ok-request counters."""
    biz = Interleaver()
    fake.script = biz.script
    client = await make_relay(
        business_overrides={"first_event_timeout_s": 10.0, "idle_timeout_s": 10.0}
    )
    async with wide_client(client) as wide:
        devices: list[Device] = []
        for first in range(0, DEVICES, CONNECT_WAVE):
            devices += await asyncio.gather(
                *(
                    Device.connect(wide, device_id=f"dev-{i:03d}")
                    for i in range(first, min(first + CONNECT_WAVE, DEVICES))
                )
            )
        sids = [d.session_id for d in devices]
        assert len(set(sids)) == DEVICES

        async def converse(dev: Device) -> list[list[dict[str, Any]]]:
            return [await round_trip(dev, rnd) for rnd in range(rounds)]

        answers = await asyncio.gather(*(converse(d) for d in devices))
        assert biz.requests == DEVICES * rounds
        for dev, per_round in zip(devices, answers, strict=True):
            assert len(biz.sent[dev.session_id]) == rounds
            for rnd, (msgs, count) in enumerate(
                zip(per_round, biz.sent[dev.session_id], strict=True)
            ):
                check_answer(dev, msgs, rnd, count)
            text = b"".join(orjson.dumps(m) for msgs in per_round for m in msgs).decode()
            assert "foreign" not in text
            assert "made-up-" not in text
            leaked = [s for s in sids if s != dev.session_id and s in text]
            assert leaked == [], f"{dev.session_id} received events of {leaked}"
        # Some injections really did carry other live sessions' ids.
        assert len(biz.seen) == DEVICES
        assert biz.injected_live > DEVICES // 2
        assert biz.injected > biz.injected_live
        await wait_metric(client, "relay_session_mismatch_dropped_total", biz.injected)
        await wait_metric(client, 'relay_business_requests_total{outcome="ok"}', DEVICES * rounds)
        mismatched = await metric(client, "relay_session_mismatch_dropped_total")
        ok = await metric(client, 'relay_business_requests_total{outcome="ok"}')
    return biz, mismatched, ok


async def test_200_devices_get_only_their_own_events(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    biz, mismatched, ok = await run_devices(make_relay, fake, rounds=1)
    assert mismatched == biz.injected
    assert ok == DEVICES


async def test_200_devices_three_round_trips_each(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    biz, mismatched, ok = await run_devices(make_relay, fake, rounds=3)
    assert mismatched == biz.injected
    assert ok == 3 * DEVICES
