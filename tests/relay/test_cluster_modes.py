"""The cluster layer on a Redis Cluster (3 primaries, 3 replicas) and on a Sentinel-managed
primary (`[redis] mode`; one Redis is tests/relay/test_cluster.py's, and joins here where
claims and releases go in batches). Each test takes a different Redis path (claim and push,
replacement, release and listing, rebuild and sweep); a primary killed mid-run costs seconds
of degraded cross-node push, never a lost device or a false answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from relay.cluster.base import Presence, PushResult
from relay.cluster.redis import RedisCluster
from relay.cluster.redis_client import split_record
from relay.cluster.redis_sharded import BUCKETS, ShardedCluster, bucket_of
from tests.relay.redis_server import running_redis
from tests.relay.redis_topologies import (  # noqa: F401 (pytest finds the fixtures by name)
    MASTER,
    ClusterServers,
    SentinelServers,
    redis_cluster_servers,
    redis_sentinel_servers,
)
from tests.relay.test_cluster import HEARTBEAT_S, Node, data_commands_of, eventually, records

MODES = ["cluster", "sentinel"]  # one Redis: tests/relay/test_cluster.py
FAILOVER_TTL_S = 10.0


@dataclass
class Store:
    """Where the nodes of a test keep presence, and how the test reads it directly."""

    mode: str
    url: str
    master: str = ""
    cluster: ClusterServers | None = None
    sentinel: SentinelServers | None = None

    def node(self, node_id: str, beat: float = HEARTBEAT_S, ttl: float = 0) -> Node:
        n = Node(self.url, node_id, beat)
        ttl = ttl or n.cluster._ttl_ms / 1000
        if self.mode == "cluster":
            n.cluster = ShardedCluster(
                self.url,
                node_id,
                presence_ttl_s=ttl,
                heartbeat_s=beat,
                op_timeout_s=0.5,
                backoff_max_s=0.2,
            )
        elif self.mode == "sentinel":
            n.cluster = RedisCluster(
                self.url,
                node_id,
                presence_ttl_s=ttl,
                heartbeat_s=beat,
                op_timeout_s=0.5,
                backoff_max_s=0.2,
                mode="sentinel",
                master=self.master,
            )
        return n

    def raw(self) -> Redis | ClusterClient:
        if self.cluster is not None:
            return ClusterClient.from_url(self.cluster.nodes[0].url)
        if self.sentinel is not None:
            return Redis(port=self.sentinel.current().port)
        return Redis.from_url(self.url)

    def old_key(self, device_id: str) -> str:
        """Where an older relay kept a device's record, apart from the index."""
        if self.mode == "cluster":
            return f"relay:{{b{bucket_of(device_id)}}}:dev:{device_id}"
        return f"relay:dev:{device_id}"

    async def records(self, raw: Redis | ClusterClient, device_id: str) -> list[Any]:
        """The device's members in its index: its record, or none."""
        return await records(raw, device_id, self.index_key(device_id))

    def old_index_key(self, device_id: str) -> str:
        """The index an older relay kept bare ids in."""
        return self.index_key(device_id).replace(":presence", ":devices")

    def index_key(self, device_id: str) -> str:
        if self.mode == "cluster":
            return f"relay:{{b{bucket_of(device_id)}}}:presence"
        return "relay:presence"

    def lease_key(self, node: str) -> str:
        return f"relay:{{n:{node}}}:lease" if self.mode == "cluster" else f"relay:lease:{node}"


@pytest.fixture(params=MODES)
def store(request: pytest.FixtureRequest) -> Store:
    return _store_of(request)


@pytest.fixture(params=["single", *MODES])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store of every mode, a private Redis for one."""
    if request.param != "single":
        yield _store_of(request)
        return
    async with running_redis(tmp_path) as server:
        yield Store("single", server.url)


def _store_of(request: pytest.FixtureRequest) -> Store:
    """The shared cluster or sentinel servers of `request.param`, healed and empty."""
    if request.param == "cluster":
        cluster: ClusterServers = request.getfixturevalue("redis_cluster_servers")
        cluster.heal()
        cluster.flush()
        return Store("cluster", cluster.url, cluster=cluster)
    sentinel: SentinelServers = request.getfixturevalue("redis_sentinel_servers")
    sentinel.heal()
    sentinel.flush()
    return Store("sentinel", sentinel.url, MASTER, sentinel=sentinel)


async def _data_commands(raw: Redis | ClusterClient) -> int:
    """As tests/relay/test_cluster.py counts them, summed over a cluster's primaries."""
    if isinstance(raw, ClusterClient):
        stats = await raw.info("commandstats", target_nodes=ClusterClient.PRIMARIES)
        return sum(data_commands_of(s) for s in stats.values())
    return data_commands_of(await raw.info("commandstats"))


async def _script_calls(raw: Redis | ClusterClient) -> int:
    """EVALSHA calls so far, summed over a cluster's primaries."""
    if isinstance(raw, ClusterClient):
        stats = await raw.info("commandstats", target_nodes=ClusterClient.PRIMARIES)
        return sum(int(s.get("cmdstat_evalsha", {}).get("calls", 0)) for s in stats.values())
    return int((await raw.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


def _slots(store: Store, ids: list[str]) -> int:
    """How many script calls a batch of `ids` takes: one per bucket on a cluster."""
    return len({bucket_of(d) for d in ids}) if store.mode == "cluster" else 1


def _calls_ok(node: Node, connects: int, calls: int, expected: int) -> bool:
    """Whether a batch took the `expected` script calls; a session that ended meanwhile (a
    0.5 s timeout on a loaded machine) claims again by its rebuild, which calls more."""
    return calls == expected or node.cluster.ops["connect"] > connects


@contextlib.asynccontextmanager
async def nodes_on(
    store: Store, beat: float = HEARTBEAT_S, ttl: float = 0
) -> AsyncIterator[tuple[Node, Node]]:
    a, b = store.node("A", beat, ttl), store.node("B", beat, ttl)
    await a.start()
    await b.start()
    try:
        assert a.cluster.available
        assert b.cluster.available
        yield a, b
    finally:
        await a.cluster.stop()
        await b.cluster.stop()


async def test_push_across_nodes_and_replacement(store: Store) -> None:
    async with nodes_on(store, beat=30.0) as (a, b):
        ids = [f"d{i}" for i in range(6)]  # several buckets, so several shards in a cluster
        for d in ids:
            await a.connect(d)
        for d in ids:
            assert await b.cluster.push(d, b"m-" + d.encode(), 2.0) == PushResult(True, "A", None)
        assert a.delivered == [(d, b"m-" + d.encode()) for d in ids]
        assert await b.cluster.push("nobody", b"m", 1.0) == PushResult(False, None, "offline")
        a.refusal = "not_supported"
        assert await b.cluster.push("d0", b"m", 1.0) == PushResult(False, "A", "not_supported")

        await b.connect("d1", "s-new")  # the device moved: A closes its connection (4001)
        await eventually(lambda: a.replaced == [("d1", "A-d1")])
        found = await a.cluster.locate("d1")
        assert found is not None
        assert (found.node, found.session_id) == ("B", "s-new")
        assert await a.cluster.push("d1", b"far", 1.0) == PushResult(True, "B", None)
        assert b.delivered == [("d1", b"far")]


async def test_listing_release_and_touch(store: Store) -> None:
    async with nodes_on(store) as (a, b):
        for i in range(5):
            await a.connect(f"a{i}", f"sa{i}")
        for i in range(4):
            await b.connect(f"b{i}", f"sb{i}")
        raw = store.raw()
        try:
            await raw.zadd(store.index_key("a2x-ghost"), {"a2x-ghost": 0})  # no record
        finally:
            await raw.aclose()
        await a.cluster.unregister("a4", "sa4")
        await b.cluster.unregister("b3", "not-its-session")  # a late close of an older one
        assert await a.cluster.settle(2.0)
        assert await b.cluster.settle(2.0)
        seen: list[Presence] = []
        cursor: str | None = None
        for _ in range(10):
            page, cursor, partial = await b.cluster.list(cursor, 3)
            assert not partial
            assert len(page) <= 3
            seen += page
            if cursor is None:
                break
        expected = {(f"a{i}", "A") for i in range(4)} | {(f"b{i}", "B") for i in range(4)}
        assert [p.device_id for p in seen] == sorted(d for d, _ in expected)
        assert {(p.device_id, p.node) for p in seen} == expected
        await a.cluster.touch("a0", "sa0")

        async def fresh() -> bool:
            found = await b.cluster.locate("a0")
            return found is not None and found.last_seen > time.time() - 5

        await eventually(fresh)
        raw = store.raw()
        try:
            assert await raw.zscore(store.index_key("a2x-ghost"), "a2x-ghost") is None
        finally:
            await raw.aclose()


async def test_a_connect_and_a_disconnect_cost_at_most_three_commands_each(store: Store) -> None:
    async with nodes_on(store, beat=30.0) as (a, _):
        raw = store.raw()
        try:
            before = await _data_commands(raw)
            for i in range(20):
                await a.connect(f"c{i}", settle=False)
            assert await a.cluster.settle(2.0)
            claims = await _data_commands(raw) - before
            for i in range(20):
                await a.cluster.unregister(f"c{i}", a.held.pop(f"c{i}").session_id)
            assert await a.cluster.settle(2.0)
            releases = await _data_commands(raw) - before - claims
        finally:
            await raw.aclose()
        # Per bucket an EVALSHA and a ZADD (ZREM), per device a ZRANGEBYLEX (its member).
        assert claims <= 3 * 20, claims  # issue #16
        assert releases <= 3 * 20, releases


async def test_an_older_relays_presence_and_this_ones_do_not_touch(store: Store) -> None:
    """Relays of the layout before records moved into the index keep presence under other
    keys (a record `dev:{id}` apart, the bare id in the index `devices`): during a rolling
    upgrade neither reads nor prunes the other's (an older relay's listing removes every
    index member it cannot find a `dev:` record for)."""
    async with nodes_on(store) as (a, b):
        raw = store.raw()
        try:
            for d in ("old1", "old2"):
                await raw.set(store.old_key(d), "z1\n1.5\n1.5\nsz\nZ")
                await raw.zadd(store.old_index_key(d), {d: 0})
            await raw.set(store.lease_key("Z"), "z1")  # the older relay's node, alive
            connects = a.cluster.ops["connect"]
            await a.connect("old1")  # the device moved to an upgraded node
            a.held["old3"] = Presence("old3", "A", "s3", time.time(), 0)
            await a.cluster._rebuild()
            found = await b.cluster.locate("old1")
            assert found is not None
            assert found.node == "A"
            assert await b.cluster.locate("old2") is None  # on the older relay only
            assert b.replaced == a.replaced == []
            page = await b.cluster.list(None, 10)
            assert [p.device_id for p in page.devices] == ["old1", "old3"]
            for d in ("old1", "old2"):  # the older relay's keys as it left them
                assert await raw.get(store.old_key(d)) == b"z1\n1.5\n1.5\nsz\nZ"
                assert await raw.zscore(store.old_index_key(d), d) == 0
                assert await raw.zscore(store.old_index_key(d), "old3") is None
            assert [len(await store.records(raw, d)) for d in ("old1", "old2", "old3")] == [1, 0, 1]
            assert a.cluster.ops["connect"] == connects  # no session ended on an error
        finally:
            await raw.aclose()


async def test_rebuild_after_lost_data_and_sweep_of_a_dead_node(store: Store) -> None:
    async with nodes_on(store) as (a, b):
        await a.connect("d1", "s1")
        await a.connect("d2", "s2")
        await b.connect("d3", "s3")
        raw = store.raw()
        try:
            # Redis lost d2's record and A's lease (data lost without a disconnect), in that
            # order: a heartbeat of A between the two would rebuild d2 before it was lost.
            await raw.zrem(store.index_key("d2"), *await store.records(raw, "d2"))
            await raw.delete(store.lease_key("A"))
            found = await b.cluster.locate("d1")
            if await raw.get(store.lease_key("A")) is None:  # A's heartbeat not yet back
                assert found is None  # no lease, no presence: at once
            await eventually(lambda: _at(b, "d2", "A"))  # the next heartbeat rebuilt
            assert await _at(b, "d1", "A")

            await a.cluster.stop()  # a crash: its lease lapses, nobody unregisters

            async def swept() -> bool:
                gone = not await store.records(raw, "d1")
                return gone and not await store.records(raw, "d2")

            await eventually(lambda: _at(b, "d1", None), timeout=3.0)
            await eventually(swept, timeout=5.0)  # B's heartbeat, no listing involved
            assert len(await store.records(raw, "d3")) == 1
            assert await _at(b, "d3", "B")
        finally:
            await raw.aclose()


async def _at(node: Node, device_id: str, where: str | None) -> bool:
    found = await node.cluster.locate(device_id)
    return (found and found.node) == where


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
async def test_a_primary_failing_over_degrades_push_for_seconds(
    mode: str, request: pytest.FixtureRequest
) -> None:
    if mode == "cluster":
        servers: ClusterServers | SentinelServers = request.getfixturevalue("redis_cluster_servers")
        store = Store("cluster", servers.url, cluster=servers)  # type: ignore[arg-type]
    else:
        servers = request.getfixturevalue("redis_sentinel_servers")
        store = Store("sentinel", servers.url, MASTER, sentinel=servers)  # type: ignore[arg-type]
    servers.heal()
    servers.flush()
    # The leases outlive the failover (about 2 s here), as presence_ttl_s (30 s) must.
    async with nodes_on(store, ttl=FAILOVER_TTL_S) as (a, b):
        ids = [f"f{i}" for i in range(8)]
        for d in ids:
            await a.connect(d)
        assert await b.cluster.push("f0", b"before", 2.0) == PushResult(True, "A", None)
        if isinstance(servers, ClusterServers):
            servers.wait_replicated()
            servers.kill_primary_of("relay:{n:A}:inbox")
        else:
            servers.wait_replicated()
            servers.current().kill()
        answers: list[PushResult] = []
        delivered_after = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        n = 0
        while loop.time() < deadline:  # push until it is delivered again
            n += 1
            res = await b.cluster.push(ids[n % len(ids)], f"p{n}".encode(), 1.0)
            answers.append(res)
            if res.delivered:
                delivered_after = True
                break
            await asyncio.sleep(0.05)
        assert delivered_after, answers[-5:]
        # Degraded, never false: no "offline" for a connected device, and what was
        # delivered reached it.
        assert all(r.reason in ("redis_unavailable", "timeout", None) for r in answers), answers
        got = {m for _, m in a.delivered}
        assert all(f"p{k}".encode() in got for k, r in enumerate(answers, 1) if r.delivered)

        async def all_there() -> bool:
            return all([await _at(b, d, "A") for d in ids])

        await eventually(all_there, timeout=10.0)  # no device lost
        for d in ids:
            assert await b.cluster.push(d, b"after", 2.0) == PushResult(True, "A", None)
    servers.heal()


async def test_a_failover_elsewhere_makes_each_node_rebuild(
    request: pytest.FixtureRequest,
) -> None:
    servers: ClusterServers = request.getfixturevalue("redis_cluster_servers")
    servers.heal()
    servers.flush()
    store = Store("cluster", servers.url, cluster=servers)
    async with nodes_on(store) as (a, b):
        await a.connect("d1")
        await b.connect("d2")
        # A primary that holds neither node's inbox: their sessions live through it, so
        # only the cluster's epoch tells them writes may have been lost there.
        inboxes = {servers.primary_of(f"relay:{{n:{n}}}:inbox").port for n in "AB"}
        other = next(p for p in servers.primaries() if p.port not in inboxes)
        connects = (a.cluster.ops["connect"], b.cluster.ops["connect"])
        rebuilds = (a.cluster.ops["rebuild"], b.cluster.ops["rebuild"])
        await asyncio.to_thread(servers.hand_over, other)  # the nodes' beats go on
        await eventually(
            lambda: (
                a.cluster.ops["rebuild"] > rebuilds[0] and b.cluster.ops["rebuild"] > rebuilds[1]
            ),
            timeout=5.0,
        )
        assert (a.cluster.ops["connect"], b.cluster.ops["connect"]) == connects  # no new session
        assert await _at(b, "d1", "A")
        assert await _at(a, "d2", "B")
        assert await b.cluster.push("d1", b"m", 2.0) == PushResult(True, "A", None)


async def test_a_batch_of_claims_lands_every_device_and_replaces_those_that_moved(
    any_store: Store,
) -> None:
    store = any_store
    async with nodes_on(store, beat=30.0) as (a, b):
        moved = ["m0", "m1", "m2"]
        for d in moved:
            await b.connect(d, f"old-{d}")
        ids = [f"x{i}" for i in range(40)]  # many buckets, so every shard of a cluster
        raw = store.raw()
        try:
            before, connects = await _script_calls(raw), a.cluster.ops["connect"]
            for d in [*ids[:20], *moved, *ids[20:]]:  # queued together: one batch
                await a.connect(d, settle=False)
            assert await a.cluster.settle(2.0)
            calls = await _script_calls(raw) - before
        finally:
            await raw.aclose()
        assert _calls_ok(a, connects, calls, _slots(store, [*ids, *moved]))  # one per bucket
        await eventually(lambda: set(b.replaced) == {(d, f"old-{d}") for d in moved})
        assert a.replaced == []
        page = await b.cluster.list(None, 100)
        assert {(p.device_id, p.node, p.session_id) for p in page.devices} == {
            (d, "A", f"A-{d}") for d in [*ids, *moved]
        }


async def test_a_batch_of_releases_leaves_the_records_newer_sessions_hold(
    any_store: Store,
) -> None:
    store = any_store
    async with nodes_on(store, beat=30.0) as (a, b):
        ids = [f"r{i}" for i in range(40)]  # some share a bucket on a cluster
        for d in ids:
            await a.connect(d, f"a-{d}", settle=False)
        assert await a.cluster.settle(2.0)
        await b.connect("r3", "b-r3")  # moved to B
        await eventually(lambda: ("r3", "a-r3") in a.replaced)
        raw = store.raw()
        try:
            before, connects = await _script_calls(raw), a.cluster.ops["connect"]
            await a.connect("r5", "a-r5-new", settle=False)  # reconnected: a newer session
            for d in ids:  # every old session closes, in the same batch as r5's claim
                await a.cluster.unregister(d, f"a-{d}")
            assert await a.cluster.settle(2.0)
            calls = await _script_calls(raw) - before
            for d in ids:
                assert len(await store.records(raw, d)) == (d in ("r3", "r5"))
        finally:
            await raw.aclose()
        expected = _slots(store, ["r5"]) + _slots(store, ids)  # claims, then releases
        assert _calls_ok(a, connects, calls, expected)
        assert await _at(a, "r3", "B")
        found = await b.cluster.locate("r5")
        assert found is not None
        assert (found.node, found.session_id) == ("A", "a-r5-new")
        page = await b.cluster.list(None, 100)
        assert [p.device_id for p in page.devices] == ["r3", "r5"]


async def test_a_device_is_one_member_of_its_index_whatever_changes(any_store: Store) -> None:
    store = any_store
    async with nodes_on(store) as (a, b):
        raw = store.raw()
        try:

            async def held_by(node: str, session: str) -> bool:
                found = await store.records(raw, "d1")
                rows = [split_record(m) for m in found]
                return [(r[1].node, r[1].session_id) for r in rows if r] == [(node, session)]

            await a.connect("d1", "s1")
            assert await held_by("A", "s1")
            await a.cluster.touch("d1", "s1")  # last_seen rewritten by the next heartbeat

            async def fresh() -> bool:
                found = await b.cluster.locate("d1")
                return found is not None and found.last_seen > time.time() - 5

            await eventually(fresh)
            assert await held_by("A", "s1")
            await b.connect("d1", "s2")  # replaced across nodes
            await eventually(lambda: a.replaced == [("d1", "s1")])
            assert await held_by("B", "s2")
            await b.cluster._rebuild()  # claimed again as it is
            await a.cluster.unregister("d1", "s1")  # a late close of the replaced one
            assert await a.cluster.settle(2.0)
            assert await held_by("B", "s2")
            assert [k async for k in raw.scan_iter(match="relay:*dev:*")] == []  # no key of its own
        finally:
            await raw.aclose()


async def test_a_listing_page_reads_the_records_with_the_ids(any_store: Store) -> None:
    store = any_store
    async with nodes_on(store, beat=30.0) as (a, b):
        ids = [f"p{i:03d}" for i in range(100)]
        for i, d in enumerate(ids):
            await (a if i % 2 else b).connect(d, settle=False)
        assert await a.cluster.settle(2.0)
        assert await b.cluster.settle(2.0)
        raw = store.raw()
        try:
            before = await _data_commands(raw)
            page = await b.cluster.list(None, 100)
            commands = await _data_commands(raw) - before
        finally:
            await raw.aclose()
        assert [p.device_id for p in page.devices] == ids
        assert not page.partial
        # The members read (a ZRANGEBYLEX in a script call; one per bucket on a cluster)
        # are the records: no read per device, only the two nodes' leases besides.
        reads = BUCKETS if store.mode == "cluster" else 2
        assert commands <= reads + 2, commands


async def test_an_id_that_holds_a_nul_is_its_own_device(any_store: Store) -> None:
    # A member is the id, a NUL, then the record: "x\0y"'s member falls in the range read
    # for "x", and is not taken for its record.
    store = any_store
    async with nodes_on(store) as (a, b):
        await a.connect("x", "s-x")
        await b.connect("x\0y", "s-xy")
        await a.connect("x\0", "s-x0")
        for d, node, session in (("x", "A", "s-x"), ("x\0y", "B", "s-xy"), ("x\0", "A", "s-x0")):
            found = await b.cluster.locate(d)
            assert found is not None
            assert (found.node, found.session_id) == (node, session)
        assert a.replaced == b.replaced == []
        await b.cluster.unregister("x\0y", "s-xy")
        assert await b.cluster.settle(2.0)
        assert await a.cluster.locate("x\0y") is None
        found = await a.cluster.locate("x")
        assert found is not None
        assert found.session_id == "s-x"


async def test_the_rebuild_orders_two_connects_within_a_millisecond(any_store: Store) -> None:
    store = any_store
    async with nodes_on(store) as (a, b):
        t = 1764900000.1001
        b.held["m"] = old = Presence("m", "B", "s-b", t, t)
        await b.cluster.register(old)  # claimed 0.3 ms before A's connection began
        assert await b.cluster.settle(2.0)
        a.held["m"] = Presence("m", "A", "s-a", t + 0.0003, t + 0.0003)
        await a.cluster._rebuild()  # A's is the newer connection: it takes the device
        await eventually(lambda: b.replaced == [("m", "s-b")])
        assert a.replaced == []
        assert await _at(b, "m", "A")
