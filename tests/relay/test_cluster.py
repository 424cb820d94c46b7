"""The cluster layer: LocalCluster in memory, and two RedisCluster nodes on one real Redis
(presence, cross-node push with acks, replacement, TTL expiry, listing, outage, recovery)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from protocol.node import (
    PushReason,
)
from relay.cluster.base import Cluster, LocalCluster, Page, Presence, PushResult
from relay.cluster.redis import RedisCluster
from relay.cluster.redis_client import AnyRedis, join_record, member_id, split_record, text
from tests.relay.redis_server import (  # noqa: F401 (pytest finds the fixture by name)
    RedisServer,
    ResettingRelay,
    free_port,
    redis_server_fixture,
)

TTL_S = 1.0
HEARTBEAT_S = 0.25
# How long a test waits for a dead node's lease to lapse (TTL_S at most, on a quiet machine);
# the wait ends as soon as it has, so a loaded machine only makes it longer, never a failure.
LAPSE_S = TTL_S + 5.0


class Node:
    """One relay node as the cluster sees it: recording callbacks around a RedisCluster."""

    def __init__(self, url: str, node_id: str, beat: float = HEARTBEAT_S) -> None:
        self.id = node_id
        ttl = max(TTL_S, 2 * beat)
        self.cluster = RedisCluster(
            url, node_id, presence_ttl_s=ttl, heartbeat_s=beat, op_timeout_s=0.5, backoff_max_s=0.2
        )
        self.held: dict[str, Presence] = {}
        self.delivered: list[tuple[str, bytes]] = []
        self.replaced: list[tuple[str, str]] = []
        self.refusal: PushReason | None = None  # what deliver answers; None: taken
        self.hang = False
        self.entered = asyncio.Event()

    async def deliver(self, device_id: str, message: bytes) -> PushReason | None:
        self.entered.set()
        if self.hang:
            await asyncio.Event().wait()
        self.delivered.append((device_id, message))
        return self.refusal

    async def replace(self, device_id: str, session_id: str) -> None:
        self.replaced.append((device_id, session_id))
        if (p := self.held.get(device_id)) is not None and p.session_id == session_id:
            del self.held[device_id]

    def local_devices(self) -> list[Presence]:
        return list(self.held.values())

    async def start(self) -> None:
        await self.cluster.start(self.deliver, self.replace, self.local_devices)

    async def connect(
        self, device_id: str, session_id: str = "", last_seen: float = 0, *, settle: bool = True
    ) -> None:
        now = time.time()
        p = Presence(device_id, self.id, session_id or f"{self.id}-{device_id}", now, last_seen)
        self.held[device_id] = p
        await self.cluster.register(p)
        if settle and self.cluster.available:  # the claim is queued: wait until it landed
            assert await self.cluster.settle(2.0)


async def records(r: AnyRedis, device_id: str, index: str = "relay:presence") -> list[Any]:
    """The members of `index` that are `device_id`'s record (one, or none when absent)."""
    found = await r.zrangebylex(index, f"[{device_id}\0", f"({device_id}\1")
    return [m for m in found if member_id(m) == device_id]


async def eventually(check: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll `check` (sync or async) until it is truthy; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_nodes(url: str, heartbeat_s: float) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node(url, "A", heartbeat_s), Node(url, "B", heartbeat_s)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.cluster.stop()
        await b.cluster.stop()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    async with two_nodes(redis_server.url, HEARTBEAT_S) as pair:
        yield pair


@pytest.fixture
async def quiet_nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes whose heartbeat never runs during a test: only messages explain what happens."""
    async with two_nodes(redis_server.url, 30.0) as pair:
        yield pair


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_server.url)
    yield r
    await r.aclose()


async def test_push_through_other_node_is_delivered_and_acked(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.connect("d1")
    message = b'{"type":"custom"}\n\x00binary\nlines'
    assert await b.cluster.push("d1", message, 2.0) == PushResult(True, "A", None)
    assert b.delivered == []
    assert await a.cluster.push("d1", b"here", 1.0) == PushResult(True, "A", None)  # directly
    assert a.delivered == [("d1", message), ("d1", b"here")]


async def test_push_to_unknown_or_refusing_device_fails(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert await b.cluster.push("nobody", b"m", 1.0) == PushResult(False, None, "offline")
    await a.connect("d1")
    a.refusal = "rejected"
    assert await b.cluster.push("d1", b"m", 1.0) == PushResult(False, "A", "rejected")
    a.refusal = "not_supported"  # the holding node's reason reaches the pusher as it is
    assert await b.cluster.push("d1", b"m", 1.0) == PushResult(False, "A", "not_supported")


async def test_push_without_ack_times_out_within_bound(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.connect("d1")
    a.hang = True
    t0 = time.monotonic()
    assert await b.cluster.push("d1", b"m", 0.3) == PushResult(False, "A", "timeout")
    assert 0.25 <= time.monotonic() - t0 < 1.0


async def test_register_on_other_node_replaces_old_connection(
    quiet_nodes: tuple[Node, Node],
) -> None:
    a, b = quiet_nodes
    await a.connect("d1", "s-old")
    await b.connect("d1", "s-new")
    await eventually(lambda: a.replaced == [("d1", "s-old")])
    found = await a.cluster.locate("d1")
    assert found is not None
    assert (found.node, found.session_id) == ("B", "s-new")
    # A no longer claims d1: its pushes now go to B.
    assert await a.cluster.push("d1", b"m", 1.0) == PushResult(True, "B", None)
    assert b.delivered == [("d1", b"m")]
    assert b.replaced == []


async def test_concurrent_registrations_leave_one_winner(quiet_nodes: tuple[Node, Node]) -> None:
    a, b = quiet_nodes
    await asyncio.gather(a.connect("d1", "sa"), b.connect("d1", "sb"))
    winner = await a.cluster.locate("d1")
    assert winner is not None
    loser = b if winner.node == "A" else a
    await eventually(lambda: loser.replaced == [("d1", f"s{loser.id.lower()}")])
    assert (a if loser is b else b).replaced == []


async def test_unregister_removes_only_its_own_session(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.connect("d1", "s1")
    await b.connect("d1", "s2")
    await a.cluster.unregister("d1", "s1")  # the replaced connection closing late
    assert await a.cluster.settle(2.0)
    found = await b.cluster.locate("d1")
    assert found is not None
    assert found.session_id == "s2"
    await b.cluster.unregister("d1", "s2")
    assert await b.cluster.settle(2.0)
    assert await a.cluster.locate("d1") is None
    assert await a.cluster.push("d1", b"m", 1.0) == PushResult(False, None, "offline")


async def test_a_lapsed_lease_rebuilds_what_redis_lost(
    nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, b = nodes
    await a.connect("d1", "s1")
    await a.connect("d2", "s2")
    # Redis lost A's lease and d2's record (data lost without a disconnect) ...
    await raw_redis.delete("relay:lease:A")
    await raw_redis.zrem("relay:presence", *await records(raw_redis, "d2"))
    assert await _at(b, "d1", None)  # no lease, no presence: at once
    # ... and a newer connection of d1 on node Z whose replace message was lost.
    await raw_redis.set("relay:lease:Z", "z1")
    later = time.time() + 60
    await raw_redis.zrem("relay:presence", *await records(raw_redis, "d1"))
    await raw_redis.zadd("relay:presence", {join_record("d1", "z1", later, later, "sz", "Z"): 0})
    await eventually(lambda: a.replaced == [("d1", "s1")])  # the next heartbeat rebuilt
    await eventually(lambda: _at(b, "d2", "A"))
    assert await _at(b, "d1", "Z")


async def inbox_gone(raw_redis: Redis, node: str) -> None:
    """Wait until Redis itself has seen a node's subscription end: its server notices a
    closed socket on its own schedule, and until then a publish still counts the node."""

    async def gone() -> bool:
        ((_, count),) = await raw_redis.pubsub_numsub(f"relay:node:{node}")
        return count == 0

    await eventually(gone, timeout=2.0)


async def test_a_stopped_node_closes_every_connection_it_had(
    redis_server: RedisServer, raw_redis: Redis
) -> None:
    # Its inbox's subscription included: else a publish still counts the stopped node, and
    # a push waits for it (a timeout) instead of answering offline.
    async def connections() -> int:
        return len(await raw_redis.client_list())

    before = await connections()
    node = Node(redis_server.url, "C")
    await node.start()
    await node.connect("dc")
    assert await connections() > before
    await node.cluster.stop()
    await eventually(lambda: _fewer(connections, before + 1), timeout=5.0)


async def _fewer(count: Callable[[], Awaitable[int]], limit: int) -> bool:
    return await count() < limit


async def test_presence_outlives_ttl_while_node_lives_and_expires_when_it_dies(
    nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, b = nodes
    await a.connect("d1")
    await asyncio.sleep(TTL_S * 1.5)
    assert (await b.cluster.locate("d1")) is not None  # renewed by A's heartbeat
    await a.cluster.stop()  # a crash: nothing unregistered
    await inbox_gone(raw_redis, "A")  # else the push may wait for A (a timeout, as truthful)
    assert await b.cluster.push("d1", b"m", 1.0) == PushResult(False, "A", "offline")
    await eventually(lambda: _at(b, "d1", None), timeout=LAPSE_S)
    assert await b.cluster.list(None, 10) == Page([], None)


async def test_a_dead_nodes_records_are_swept_by_a_live_node(
    nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, b = nodes
    await a.connect("d1")
    await b.connect("d2")
    await a.cluster.stop()  # a crash: its lease lapses, nobody unregisters d1
    await eventually(lambda: _at(b, "d1", None), timeout=LAPSE_S)

    async def swept() -> bool:
        return not await records(raw_redis, "d1")

    await eventually(swept, timeout=2.0)  # B's heartbeat, no listing involved
    assert [member_id(m) for m in await raw_redis.zrange("relay:presence", 0, -1)] == ["d2"]
    registry = await raw_redis.smembers("relay:nodes")
    assert [text(m).split("\n")[0] for m in registry] == ["B"]
    assert await _at(b, "d2", "B")


async def test_a_restarted_node_does_not_bring_back_its_old_devices(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    await a.connect("d1")
    await a.cluster.stop()  # a crash, then the same node id starts again at once
    again = Node(redis_server.url, "A")
    await again.start()
    try:
        assert again.cluster.available
        assert await _at(b, "d1", None)  # a new lease: the old process's records are dead
        assert await b.cluster.list(None, 10) == Page([], None)
        assert await b.cluster.push("d1", b"m", 1.0) == PushResult(False, None, "offline")
        await again.connect("d1", "s-again")
        assert await _at(b, "d1", "A")
    finally:
        await again.cluster.stop()


async def test_a_heartbeat_costs_the_same_for_many_devices(
    nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, _ = nodes
    for i in range(300):
        await a.connect(f"d{i}", settle=False)
    assert await a.cluster.settle(2.0)
    assert await raw_redis.pttl("relay:presence") == -1  # no per-device expiry to renew
    await raw_redis.config_resetstat()
    beats = a.cluster.ops.get("heartbeat", 0)
    await eventually(lambda: a.cluster.ops.get("heartbeat", 0) >= beats + 4)
    commands = int((await raw_redis.info("stats"))["total_commands_processed"])
    # Both nodes beat about 4 times: a lease (3 commands) and a registry check (2 + nodes)
    # each; renewing 300 devices would be over 1,000 commands per beat.
    assert commands < 100, commands


def data_commands_of(stats: dict[str, Any]) -> int:
    """Commands Redis ran so far (INFO commandstats), Lua's included, but not connection
    handshakes, INFO or the client's reads of the cluster's shape."""
    skip = ("hello", "client", "info", "ping", "config", "subscribe", "cluster", "command")
    return sum(int(v["calls"]) for k, v in stats.items() if k.split("|")[0][8:] not in skip)


async def _data_commands(r: Redis) -> int:
    return data_commands_of(await r.info("commandstats"))


async def test_a_connect_and_a_disconnect_cost_at_most_three_commands_each(
    quiet_nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, _ = quiet_nodes
    before = await _data_commands(raw_redis)
    for i in range(20):
        await a.connect(f"c{i}", settle=False)
    assert await a.cluster.settle(2.0)
    claims = await _data_commands(raw_redis) - before
    for i in range(20):
        await a.cluster.unregister(f"c{i}", a.held.pop(f"c{i}").session_id)
    assert await a.cluster.settle(2.0)
    releases = await _data_commands(raw_redis) - before - claims
    # At most 3 each (issue #16); queued together, they go in one batch: one EVALSHA and
    # one ZADD (ZREM) for all, and a ZRANGEBYLEX per device (its member, if any).
    assert claims <= 20 + 2, claims
    assert releases <= 20 + 2, releases
    assert await raw_redis.zcard("relay:presence") == 0
    assert await raw_redis.dbsize() == 3  # the two nodes' leases and their registry
    assert await raw_redis.exists("relay:nodes")


async def test_a_burst_larger_than_a_script_call_lands_every_device(
    quiet_nodes: tuple[Node, Node], raw_redis: Redis
) -> None:
    a, b = quiet_nodes
    await b.connect("d0500", "s-old")
    before = int((await raw_redis.info("commandstats"))["cmdstat_evalsha"]["calls"])
    connects = a.cluster.ops["connect"]
    for i in range(1200):  # one round, cut into script calls of 512 devices
        await a.connect(f"d{i:04d}", settle=False)
    assert await a.cluster.settle(2.0)
    calls = int((await raw_redis.info("commandstats"))["cmdstat_evalsha"]["calls"]) - before
    assert calls == 3 or a.cluster.ops["connect"] > connects  # else a rebuild claimed them
    assert await raw_redis.zcard("relay:presence") == 1200
    await eventually(lambda: ("d0500", "s-old") in b.replaced)
    found = await b.cluster.locate("d1199")
    assert found is not None
    assert (found.node, found.session_id) == ("A", "A-d1199")
    for i in range(1200):
        await a.cluster.unregister(f"d{i:04d}", a.held.pop(f"d{i:04d}").session_id)
    assert await a.cluster.settle(2.0)
    assert await raw_redis.zcard("relay:presence") == 0
    assert await raw_redis.dbsize() == 3  # the two nodes' leases and their registry


async def test_touch_reaches_redis_with_the_heartbeat(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await a.connect("d1", "s1", last_seen=100.0)
    await a.cluster.touch("d1", "s1")

    async def fresh() -> bool:
        found = await b.cluster.locate("d1")
        return found is not None and found.last_seen > time.time() - 5

    await eventually(fresh)


async def _at(node: Node, device_id: str, where: str | None) -> bool:
    """Whether `node` sees the device on node `where` (None: nowhere)."""
    found = await node.cluster.locate(device_id)
    return (found and found.node) == where


async def test_list_pages_through_every_node(nodes: tuple[Node, Node], raw_redis: Redis) -> None:
    a, b = nodes
    for i in range(5):
        await a.connect(f"a{i}")
    for i in range(4):
        await b.connect(f"b{i}")
    await raw_redis.zadd("relay:presence", {"a2x-ghost": 0})  # its hash expired long ago
    seen: list[Presence] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor, partial = await b.cluster.list(cursor, 3)
        assert not partial
        assert len(page) <= 3
        seen += page
        pages += 1
        if cursor is None:
            break
    assert [p.device_id for p in seen] == sorted(p.device_id for p in seen)
    assert {(p.device_id, p.node) for p in seen} == {(f"a{i}", "A") for i in range(5)} | {
        (f"b{i}", "B") for i in range(4)
    }
    assert pages == 4  # 3 + 3 (the ghost skipped, the page refilled) + 3 + an empty last
    assert await raw_redis.zscore("relay:presence", "a2x-ghost") is None  # cleaned up lazily


async def test_redis_outage_degrades_then_recovers(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    await a.connect("d1")
    await b.connect("d2")
    await redis_server.kill()
    await eventually(lambda: not a.cluster.available and not b.cluster.available)

    assert await a.cluster.push("d1", b"local", 1.0) == PushResult(True, "A", None)
    assert await b.cluster.push("d1", b"far", 1.0) == PushResult(False, None, "redis_unavailable")
    await a.connect("d3")  # no exception: counted, applied when Redis returns
    a.held["d4"] = Presence("d4", "A", "s4", 1.0, 1.0)  # rebuilt from local_devices()
    await a.cluster.touch("d1", "A-d1")
    await b.cluster.unregister("d2", "B-d2")
    del b.held["d2"]
    assert a.cluster.errors["register"] >= 1
    assert b.cluster.errors["unregister"] >= 1
    assert (await a.cluster.locate("d1")) is not None  # its own record
    listed = await a.cluster.list(None, 10)
    assert [p.device_id for p in listed.devices] == ["d1", "d3"]
    assert listed.partial  # only A's own devices while Redis is down

    await redis_server.restart()  # empty: presence must be rebuilt
    await eventually(lambda: a.cluster.available and b.cluster.available, timeout=5.0)
    assert await _at(b, "d1", "A")
    assert await _at(b, "d3", "A")
    assert await _at(b, "d4", "A")
    assert await b.cluster.locate("d2") is None
    assert await b.cluster.push("d1", b"again", 1.0) == PushResult(True, "A", None)
    assert a.delivered[-1] == ("d1", b"again")


async def test_registration_does_not_wait_for_a_frozen_redis(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    await b.connect("moved", "s-old")
    redis_server.pause()  # alive, its sockets open, answering nothing
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ids = [f"f{i}" for i in range(8)]
        await asyncio.gather(*(a.connect(d, settle=False) for d in ids))
        await a.connect("moved", "s-new", settle=False)  # it left B during the freeze
        assert loop.time() - start < 0.3  # each used to wait its turn: 9 x 0.5 s
        # The queued claims time out: the node says Redis is away (readiness: degraded).
        await eventually(lambda: not a.cluster.available)
        assert await a.cluster.push("f0", b"m", 1.0) == PushResult(True, "A", None)
        page = await a.cluster.list(None, 100)
        assert page.partial
        assert {p.device_id for p in page.devices} == {*ids, "moved"}
    finally:
        redis_server.resume()

    await eventually(lambda: a.cluster.available and b.cluster.available, timeout=5.0)

    async def all_on_a() -> bool:
        return all([await _at(b, d, "A") for d in (*ids, "moved")])

    await eventually(all_on_a)
    await eventually(lambda: set(b.replaced) == {("moved", "s-old")})  # closed there: 4001
    assert a.replaced == []
    page = await b.cluster.list(None, 100)
    assert not page.partial
    assert {(p.device_id, p.node) for p in page.devices} == {(d, "A") for d in (*ids, "moved")}
    assert await b.cluster.push("f3", b"far", 1.0) == PushResult(True, "A", None)
    assert await b.cluster.push("moved", b"far", 1.0) == PushResult(True, "A", None)
    assert a.delivered[-2:] == [("f3", b"far"), ("moved", b"far")]


async def test_sockets_reset_under_the_nodes_are_an_outage_not_a_crash(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.cluster")
    relay = ResettingRelay(redis_server.port)
    await relay.start()
    try:
        async with two_nodes(relay.url, HEARTBEAT_S) as (a, b):
            for i in range(4):
                await a.connect(f"d{i}")
            assert await b.cluster.push("d0", b"m", 1.0) == PushResult(True, "A", None)
            beats = (a.cluster.ops.get("heartbeat", 0), b.cluster.ops.get("heartbeat", 0))
            relay.reset()  # every socket, the idle pooled ones too, dies with a TCP reset
            # Heartbeats run on the pooled sockets the reset killed while they sat idle.
            await eventually(
                lambda: (
                    a.cluster.ops.get("heartbeat", 0) >= beats[0] + 2
                    and b.cluster.ops.get("heartbeat", 0) >= beats[1] + 2
                    and a.cluster.available
                    and b.cluster.available
                )
            )
            await a.connect("d9")
            assert await b.cluster.push("d9", b"m", 1.0) == PushResult(True, "A", None)
            page = await b.cluster.list(None, 10)
            assert (len(page.devices), page.partial) == (5, False)
    finally:
        await relay.close()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 2, warnings  # at most one line per node
    assert all(w.startswith("cluster: redis unavailable (") for w in warnings), warnings


async def test_push_waiting_for_ack_fails_fast_when_redis_dies(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    await a.connect("d1")
    a.hang = True
    push = asyncio.create_task(b.cluster.push("d1", b"m", 5.0))
    await eventually(a.entered.is_set)
    await redis_server.kill()
    async with asyncio.timeout(1.0):
        assert await push == PushResult(False, "A", "redis_unavailable")


async def test_stop_is_bounded_when_a_task_swallows_its_cancellation(
    redis_server: RedisServer,
) -> None:
    entered, swallowed = asyncio.Event(), asyncio.Event()

    async def stubborn(device_id: str, session_id: str) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # as a library call may turn a cancel into an error it handles
        await asyncio.Event().wait()

    a, b = Node(redis_server.url, "A", 30.0), Node(redis_server.url, "B", 30.0)
    a.replace = stubborn  # type: ignore[method-assign]
    await a.start()
    await b.start()
    try:
        await a.connect("d1", "s-old")
        await b.connect("d1", "s-new")  # A is told to close its connection: the callback runs
        await eventually(entered.is_set)
        async with asyncio.timeout(2.0):
            await a.cluster.stop()
        assert swallowed.is_set()
    finally:
        await b.cluster.stop()


async def test_start_without_redis_does_not_fail() -> None:
    node = Node(f"redis://127.0.0.1:{free_port()}/0", "A")
    t0 = time.monotonic()
    await node.start()
    assert time.monotonic() - t0 < 3.0
    assert not node.cluster.available
    await node.connect("d1")
    assert await node.cluster.push("d1", b"m", 1.0) == PushResult(True, "A", None)
    assert await node.cluster.push("d9", b"m", 1.0) == PushResult(False, None, "redis_unavailable")
    assert node.cluster.errors["register"] == 1
    await node.cluster.stop()


def test_both_implement_the_interface_and_timing_is_checked() -> None:
    clusters: list[Cluster] = [LocalCluster(), RedisCluster("redis://127.0.0.1:1/0", "A")]
    assert [c.node_id for c in clusters] == ["local", "A"]
    with pytest.raises(ValueError, match="heartbeat_s"):
        RedisCluster("redis://127.0.0.1:1/0", "A", presence_ttl_s=5, heartbeat_s=5)


async def test_local_cluster_presence_and_listing() -> None:
    c = LocalCluster("solo")
    for i in (3, 1, 2):
        await c.register(Presence(f"d{i}", "elsewhere", f"s{i}", 1.0, 1.0))
    page, cursor, _ = await c.list(None, 2)
    assert [p.device_id for p in page] == ["d1", "d2"]
    assert cursor == "d2"
    assert all(p.node == "solo" for p in page)
    assert await c.list(cursor, 2) == Page([Presence("d3", "solo", "s3", 1.0, 1.0)], None)
    await c.register(Presence("d1", "solo", "s1b", 2.0, 2.0))  # reconnected: newer wins
    await c.unregister("d1", "s1")  # the old connection closing late
    assert (await c.locate("d1")) == Presence("d1", "solo", "s1b", 2.0, 2.0)
    await c.touch("d1", "s1b")
    found = await c.locate("d1")
    assert found is not None
    assert found.last_seen > 2.0
    await c.unregister("d1", "s1b")
    assert await c.locate("d1") is None


async def test_local_cluster_push_outcomes() -> None:
    got: list[tuple[str, bytes]] = []

    async def deliver(device_id: str, message: bytes) -> PushReason | None:
        if device_id == "hangs":
            await asyncio.Event().wait()
        if device_id == "broken":
            raise RuntimeError("link gone")
        got.append((device_id, message))
        refusals: dict[str, PushReason] = {"refuses": "rejected", "unable": "not_supported"}
        return refusals.get(device_id)

    c = LocalCluster()
    await c.start(deliver, _no_replace, lambda: [Presence("ok", "?", "s0", 0.0, 0.0)])
    for d in ("refuses", "unable", "hangs", "broken"):
        await c.register(Presence(d, "local", "s", 0.0, 0.0))
    assert await c.push("ok", b"m", 1.0) == PushResult(True, "local", None)
    assert await c.push("refuses", b"m", 1.0) == PushResult(False, "local", "rejected")
    assert await c.push("unable", b"m", 1.0) == PushResult(False, "local", "not_supported")
    assert await c.push("hangs", b"m", 0.05) == PushResult(False, "local", "timeout")
    assert await c.push("broken", b"m", 1.0) == PushResult(False, "local", "rejected")
    assert await c.push("absent", b"m", 1.0) == PushResult(False, None, "offline")
    assert got == [("ok", b"m"), ("refuses", b"m"), ("unable", b"m")]
    await c.stop()


async def _no_replace(device_id: str, session_id: str) -> None:
    return None


@pytest.mark.parametrize(
    ("device_id", "connected_at", "last_seen"),
    [
        ("AABBCCDDEEFF", 1764900000.123, 1764900000.123),  # as claimed: last_seen "0"
        ("d\nwith\0nul", 1764900000.5, 1764900612.25),  # an id may hold both separators
        ("d", 1764900000.5, 1764899999.0),  # a clock that stepped back: a negative offset
        ("d", 0.0, 0.0),
    ],
)
def test_a_record_is_its_member_and_back(
    device_id: str, connected_at: float, last_seen: float
) -> None:
    member = join_record(device_id, "l3ase_", connected_at, last_seen, "sess", "node x")
    assert split_record(member) == (
        device_id,
        Presence(device_id, "node x", "sess", connected_at, last_seen),
        "l3ase_",
    )
    assert member_id(member) == device_id
    assert split_record(device_id) is None  # a bare id: an older relay's index member
