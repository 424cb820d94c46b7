"""The simulated nodes of bench/fleet.py, one process per relay version measured.

Run as a script (`python bench/_fleet_nodes.py PARAMS_JSON`) with the measured tree's root
first on PYTHONPATH, so `relay` is that tree's; it uses only what every version of the
cluster layer offers (`RedisCluster(url, node_id, presence_ttl_s=, heartbeat_s=)`, start,
register, unregister, settle, locate, list, push, stop), and `ShardedCluster` for a Redis
Cluster (`"mode": "cluster"`, `"shards"`: the primaries' URLs). Prints one JSON document.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from relay.cluster.base import Presence
from relay.cluster.redis import RedisCluster

_SETTLE_S = 120.0
_STOP_S = 15.0
# register() never waits: without a yield, registering a million devices would hold the
# loop for minutes, and every node's lease would lapse before its first heartbeat.
_YIELD_EVERY = 1000
_OP_TIMEOUT_S = 10.0
_T0 = time.monotonic()


def _progress(msg: str) -> None:
    print(f"[nodes {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Fleet:
    """`nodes` RedisCluster nodes, each with the devices registered on it."""

    def __init__(
        self, url: str, nodes: int, ttl_s: float, heartbeat_s: float, mode: str = "single"
    ) -> None:
        kind = RedisCluster
        if mode == "cluster":  # only this tree has it
            from relay.cluster.redis_sharded import ShardedCluster

            kind = ShardedCluster
        # Ten nodes share one process (and its CPU): a Redis call may wait its turn for
        # the loop much longer than on a node of its own, so the bound is wider than 2 s.
        self.clusters = [
            kind(
                url,
                f"fleet-{n}",
                presence_ttl_s=ttl_s,
                heartbeat_s=heartbeat_s,
                op_timeout_s=_OP_TIMEOUT_S,
            )
            for n in range(nodes)
        ]
        self.held: list[dict[str, Presence]] = [{} for _ in range(nodes)]

    async def start(self) -> None:
        for c, held in zip(self.clusters, self.held, strict=True):
            await c.start(_deliver, _replace, _devices_of(held))
            if not c.available:
                raise RuntimeError(f"{c.node_id}: redis not reachable")

    async def stop(self) -> int:
        """Stop every node, each bounded; how many did not stop in time (stderr names
        them: RedisCluster.stop can wait on the client's pool after a cancelled call)."""
        done = await asyncio.gather(*(_bounded_stop(c) for c in self.clusters))
        return done.count(False)

    async def connect(self, ids: list[str]) -> None:
        """Register each device on node (index mod nodes) and wait until all landed."""
        now = time.time()
        for i, device_id in enumerate(ids):
            n = i % len(self.clusters)
            p = Presence(device_id, self.clusters[n].node_id, f"s-{device_id}", now, now)
            self.held[n][device_id] = p
            await self.clusters[n].register(p)
            if i % _YIELD_EVERY == 0:  # devices arrive over time: writers, beats run
                await asyncio.sleep(0)
        await self.settle()

    async def disconnect(self, ids: list[str]) -> None:
        for i, device_id in enumerate(ids):
            n = i % len(self.clusters)
            p = self.held[n].pop(device_id)
            await self.clusters[n].unregister(device_id, p.session_id)
            if i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        await self.settle()

    async def settle(self) -> None:
        done = await asyncio.gather(*(c.settle(_SETTLE_S) for c in self.clusters))
        if not all(done):
            raise RuntimeError("queued claims or releases did not reach redis")


async def _bounded_stop(c: RedisCluster) -> bool:
    try:
        async with asyncio.timeout(_STOP_S):
            await c.stop()
    except TimeoutError:
        _progress(f"{c.node_id}: stop() did not return in {_STOP_S:.0f} s")
        return False
    return True


def _devices_of(held: dict[str, Presence]) -> Callable[[], list[Presence]]:
    """A node's `local_devices` callback: what it holds now (rebuilt from after an outage)."""
    return lambda: list(held.values())


async def _deliver(device_id: str, message: bytes) -> None:
    return None


async def _replace(device_id: str, session_id: str) -> None:
    return None


class Shards:
    """Every Redis the fleet uses (one, or a cluster's primaries), read and summed."""

    def __init__(self, urls: list[str]) -> None:
        self.rs = [Redis.from_url(u) for u in urls]

    async def stats(self) -> dict[str, int]:
        """Commands processed so far (script-internal ones included), script calls, memory."""
        total = {"commands": 0, "scripts": 0, "used_memory": 0}
        for r in self.rs:
            stats = await r.info("stats")
            calls = await r.info("commandstats")
            mem = await r.info("memory")
            total["scripts"] += sum(
                int(v["calls"])
                for k, v in calls.items()
                if k in ("cmdstat_evalsha", "cmdstat_eval")
            )
            total["commands"] += int(stats["total_commands_processed"])
            total["used_memory"] += int(mem["used_memory"])
        return total

    async def flushall(self) -> None:
        for r in self.rs:
            await r.flushall()

    async def ops_per_sec(self) -> int:
        return sum([int((await r.info("stats"))["instantaneous_ops_per_sec"]) for r in self.rs])

    async def aclose(self) -> None:
        for r in self.rs:
            await r.aclose()


def _delta(after: dict[str, int], before: dict[str, int], probe: int = 3) -> dict[str, int]:
    """Commands and scripts between two readings, less the `probe` INFO calls of a reading
    (per Redis read)."""
    return {
        "commands": after["commands"] - before["commands"] - probe,
        "scripts": after["scripts"] - before["scripts"],
    }


def _fleet(p: dict[str, Any], ttl_s: float, heartbeat_s: float) -> Fleet:
    return Fleet(p["url"], p["nodes"], ttl_s, heartbeat_s, p.get("mode", "single"))


async def churn(shards: Shards, p: dict[str, Any]) -> dict[str, Any]:
    """Commands per connect and per disconnect, heartbeats out of the way."""
    fleet = _fleet(p, 7200, 3600)
    await fleet.start()
    probe = 3 * len(shards.rs)
    try:
        ids = [f"churn-{i:07d}" for i in range(p["churn"])]
        s0 = await shards.stats()
        await fleet.connect(ids)
        s1 = await shards.stats()
        _progress(f"churn: {len(ids)} connected")
        await fleet.disconnect(ids)
        s2 = await shards.stats()
        _progress(f"churn: {len(ids)} gone")
    finally:
        stuck = await fleet.stop()
    n = len(ids)
    up, down = _delta(s1, s0, probe), _delta(s2, s1, probe)
    return {
        "devices": n,
        "commands_per_connect": up["commands"] / n,
        "scripts_per_connect": up["scripts"] / n,
        "commands_per_disconnect": down["commands"] / n,
        "scripts_per_disconnect": down["scripts"] / n,
        "nodes_stuck_in_stop": stuck,
    }


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "samples": len(ordered),
    }


async def latencies(fleet: Fleet, devices: int, samples: int) -> dict[str, Any]:
    """Lookup, a listing page of 100 and a cross-node push, each timed one at a time from
    the second node, for devices held by the first (seeded random picks)."""
    a, b = fleet.clusters[0], fleet.clusters[-1]
    rng = random.Random(16)
    nodes = len(fleet.clusters)
    held = [f"dev-{i:07d}" for i in range(0, devices, nodes)]  # on node 0
    look: list[float] = []
    missed = 0
    for _ in range(samples):
        t0 = time.perf_counter()
        found = await b.locate(rng.choice(held))
        look.append(time.perf_counter() - t0)
        missed += found is None or found.node != a.node_id
    pages: list[float] = []
    short = 0
    for _ in range(max(1, samples // 10)):
        cursor = f"dev-{rng.randrange(devices):07d}"
        t0 = time.perf_counter()
        page = await b.list(cursor, 100)
        pages.append(time.perf_counter() - t0)
        short += len(page.devices) < 100 and page.next_cursor is not None
    pushes: list[float] = []
    failed = 0
    for _ in range(samples if nodes > 1 else 0):
        t0 = time.perf_counter()
        res = await b.push(rng.choice(held), b"m", 2.0)
        pushes.append(time.perf_counter() - t0)
        failed += not res.delivered
    out = {
        "lookup": {**_ms(look), "missed": missed},
        "list_page_100": _ms(pages),
        "short_pages": short,
        "errors": {c.node_id: dict(c.errors) for c in (a, b) if c.errors},
    }
    if pushes:
        out["cross_node_push"] = {**_ms(pushes), "undelivered": failed}
    return out


async def steady(shards: Shards, p: dict[str, Any]) -> dict[str, Any]:
    """Memory per present device and commands per second while nothing changes; then, if
    asked, lookup, listing and push latencies with all of them present."""
    await shards.flushall()
    fleet = _fleet(p, p["ttl_s"], p["heartbeat_s"])
    await fleet.start()
    probe = 3 * len(shards.rs)
    timings: dict[str, Any] = {}
    try:
        s0 = await shards.stats()
        t0 = time.monotonic()
        await fleet.connect([f"dev-{i:07d}" for i in range(p["devices"])])
        register_s = time.monotonic() - t0
        s1 = await shards.stats()
        _progress(f"steady: {p['devices']} connected in {register_s:.1f} s")
        await asyncio.sleep(p["heartbeat_s"])  # past one heartbeat of every node
        s2 = await shards.stats()
        t2 = time.monotonic()
        await asyncio.sleep(p["window_s"])
        s3 = await shards.stats()
        window = time.monotonic() - t2
        _progress(f"steady: window of {window:.1f} s done")
        instantaneous = await shards.ops_per_sec()
        present, record = await _present(p)
        if p.get("latency_samples"):
            timings = await latencies(fleet, p["devices"], p["latency_samples"])
            _progress(f"latencies: {timings}")
    finally:
        stuck = await fleet.stop()
    d = _delta(s3, s2, probe)
    return {
        "devices": p["devices"],
        "present_in_index": present,
        "register_s": register_s,
        "registered_per_s": p["devices"] / register_s,
        "memory_bytes_per_device": (s1["used_memory"] - s0["used_memory"]) / p["devices"],
        "record_bytes": record,  # one record: its key's MEMORY USAGE, or its member's length
        "window_s": window,
        "commands_per_s": d["commands"] / window,
        "scripts_per_s": d["scripts"] / window,
        "instantaneous_ops_per_sec": instantaneous,
        "nodes_stuck_in_stop": stuck,
        **timings,
    }


async def _present(p: dict[str, Any]) -> tuple[int, int | None]:
    """Members of the index (all buckets in a cluster) and what one device's record holds:
    the MEMORY USAGE of its key, where records have keys of their own, else the bytes of
    its member in the index."""
    r: Redis | ClusterClient
    if p.get("mode") != "cluster":
        r, indexes = Redis.from_url(p["url"]), ["relay:presence"]
        index, key = "relay:presence", "relay:dev:dev-0000000"
    else:
        from relay.cluster.redis_sharded import BUCKETS, bucket_of

        r = ClusterClient.from_url(p["shards"][0])
        indexes = [f"relay:{{b{b}}}:presence" for b in range(BUCKETS)]
        index = indexes[bucket_of("dev-0000000")]
        key = f"relay:{{b{bucket_of('dev-0000000')}}}:dev:dev-0000000"
    try:
        present = sum([await r.zcard(i) for i in indexes])
        if await r.exists(key):
            return present, await r.memory_usage(key)
        member = await r.zrangebylex(index, "[dev-0000000\0", "(dev-0000000\1")
        return present, len(member[0]) if member else None
    finally:
        await r.aclose()


async def main(p: dict[str, Any]) -> dict[str, Any]:
    shards = Shards(p.get("shards") or [p["url"]])
    try:
        await shards.flushall()
        return {"churn": await churn(shards, p), "steady": await steady(shards, p)}
    finally:
        await shards.aclose()


if __name__ == "__main__":
    json.dump(asyncio.run(main(json.loads(sys.argv[1]))), sys.stdout)
