"""The simulated nodes of bench/fleet.py, one process per relay version measured.

Run as a script (`python bench/_fleet_nodes.py PARAMS_JSON`) with the measured tree's root
first on PYTHONPATH, so `relay` is that tree's; it uses only what every version of the
cluster layer offers (`RedisCluster(url, node_id, presence_ttl_s=, heartbeat_s=)`, start,
register, unregister, settle, stop). Prints one JSON document.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from relay.cluster.base import Presence
from relay.cluster.redis import RedisCluster

_SETTLE_S = 120.0
_STOP_S = 15.0
_T0 = time.monotonic()


def _progress(msg: str) -> None:
    print(f"[nodes {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Fleet:
    """`nodes` RedisCluster nodes, each with the devices registered on it."""

    def __init__(self, url: str, nodes: int, ttl_s: float, heartbeat_s: float) -> None:
        self.clusters = [
            RedisCluster(url, f"fleet-{n}", presence_ttl_s=ttl_s, heartbeat_s=heartbeat_s)
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
            p = Presence(device_id, "", f"s-{device_id}", now, now)
            self.held[n][device_id] = p
            await self.clusters[n].register(p)
        await self.settle()

    async def disconnect(self, ids: list[str]) -> None:
        for i, device_id in enumerate(ids):
            n = i % len(self.clusters)
            p = self.held[n].pop(device_id)
            await self.clusters[n].unregister(device_id, p.session_id)
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


async def _stats(r: Redis) -> dict[str, int]:
    """Commands processed so far (script-internal ones included), script calls, memory."""
    stats = await r.info("stats")
    calls = await r.info("commandstats")
    mem = await r.info("memory")
    scripts = sum(
        int(v["calls"]) for k, v in calls.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    return {
        "commands": int(stats["total_commands_processed"]),
        "scripts": scripts,
        "used_memory": int(mem["used_memory"]),
    }


def _delta(after: dict[str, int], before: dict[str, int], probe: int = 3) -> dict[str, int]:
    """Commands and scripts between two readings, less the `probe` INFO calls of a reading."""
    return {
        "commands": after["commands"] - before["commands"] - probe,
        "scripts": after["scripts"] - before["scripts"],
    }


async def churn(url: str, r: Redis, p: dict[str, Any]) -> dict[str, Any]:
    """Commands per connect and per disconnect, heartbeats out of the way."""
    fleet = Fleet(url, p["nodes"], 7200, 3600)
    await fleet.start()
    try:
        ids = [f"churn-{i:07d}" for i in range(p["churn"])]
        s0 = await _stats(r)
        await fleet.connect(ids)
        s1 = await _stats(r)
        _progress(f"churn: {len(ids)} connected")
        await fleet.disconnect(ids)
        s2 = await _stats(r)
        _progress(f"churn: {len(ids)} gone")
    finally:
        stuck = await fleet.stop()
    n = len(ids)
    up, down = _delta(s1, s0), _delta(s2, s1)
    return {
        "devices": n,
        "commands_per_connect": up["commands"] / n,
        "scripts_per_connect": up["scripts"] / n,
        "commands_per_disconnect": down["commands"] / n,
        "scripts_per_disconnect": down["scripts"] / n,
        "nodes_stuck_in_stop": stuck,
    }


async def steady(url: str, r: Redis, p: dict[str, Any]) -> dict[str, Any]:
    """Memory per present device and commands per second while nothing changes."""
    await r.flushall()
    fleet = Fleet(url, p["nodes"], p["ttl_s"], p["heartbeat_s"])
    await fleet.start()
    try:
        s0 = await _stats(r)
        t0 = time.monotonic()
        await fleet.connect([f"dev-{i:07d}" for i in range(p["devices"])])
        register_s = time.monotonic() - t0
        s1 = await _stats(r)
        _progress(f"steady: {p['devices']} connected in {register_s:.1f} s")
        await asyncio.sleep(p["heartbeat_s"])  # past one heartbeat of every node
        s2 = await _stats(r)
        t2 = time.monotonic()
        await asyncio.sleep(p["window_s"])
        s3 = await _stats(r)
        window = time.monotonic() - t2
        _progress(f"steady: window of {window:.1f} s done")
        instantaneous = int((await r.info("stats"))["instantaneous_ops_per_sec"])
        present = await r.zcard(b"relay:devices")
        record = await r.memory_usage(b"relay:dev:dev-0000000")
    finally:
        stuck = await fleet.stop()
    d = _delta(s3, s2)
    return {
        "devices": p["devices"],
        "present_in_index": present,
        "register_s": register_s,
        "registered_per_s": p["devices"] / register_s,
        "memory_bytes_per_device": (s1["used_memory"] - s0["used_memory"]) / p["devices"],
        "record_bytes": record,  # MEMORY USAGE of one device's record; the index holds the rest
        "window_s": window,
        "commands_per_s": d["commands"] / window,
        "scripts_per_s": d["scripts"] / window,
        "instantaneous_ops_per_sec": instantaneous,
        "nodes_stuck_in_stop": stuck,
    }


async def main(p: dict[str, Any]) -> dict[str, Any]:
    url = p["url"]
    r = Redis.from_url(url)
    try:
        await r.flushall()
        return {"churn": await churn(url, r, p), "steady": await steady(url, r, p)}
    finally:
        await r.aclose()


if __name__ == "__main__":
    json.dump(asyncio.run(main(json.loads(sys.argv[1]))), sys.stdout)
