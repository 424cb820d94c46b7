"""The cluster layer on a Redis Cluster (`[redis] mode = "cluster"`, docs/scale.md): what
relay.cluster.redis does on one Redis, with keys that hash tags keep one script to one slot.

Keys under `key_prefix` ("relay:"): a device belongs to one of `BUCKETS` buckets (CRC-32 of
its id), whose slot holds the bucket's index `{b<n>}:presence`, a sorted set whose members are
the records (as on one Redis), so claims or releases are one script in one slot, a call per
bucket of a batch, and the index is spread over `BUCKETS` slots instead of one hot key. A
node's lease `{n:<node>}:lease` and its inbox, a sharded pub/sub channel `{n:<node>}:inbox`
(`SSUBSCRIBE`/`SPUBLISH`, Redis >= 7), share the node's slot.

A record still counts only while its node holds the lease it names, but the lease lives in
another slot than the record: the scripts cannot read it, so the client does, in a second
round trip (the members of a lookup or page, then the leases of the nodes they name); the
client removes the members it found dead (a ZREM of that exact member: a newer record is
another member). The rebuild passes the leases it found live to its script; a claim
returns the previous holder whatever its lease, and that node is told to close its
connection (it does only if that session is still open there). Listing merges the buckets:
each is read a few members past the cursor (more where the merge needs them), so a page
stays ordered by id across the whole cluster."""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub
from redis.asyncio.cluster import RedisCluster as ShardedRedis

from protocol.node import decode_node_message
from relay.cluster.base import Page, Presence
from relay.cluster.redis import RedisCluster
from relay.cluster.redis_client import after, member_id, split_record, text
from relay.cluster.redis_scripts import SHARDED_SCRIPTS

log = logging.getLogger(__name__)

BUCKETS = 64  # index and record buckets, each its own slot: a shard holds BUCKETS / shards
_LIST_ROUNDS = 8  # refills of a page thinned by dead members
_SWEEP_CHUNK = 500  # index members a sweep step reads
_SWEEP_STEPS = 20  # sweep steps per heartbeat


def bucket_of(device_id: str) -> int:
    """The bucket of a device: CRC-32 of its id, so every node agrees."""
    return zlib.crc32(device_id.encode()) % BUCKETS


class ShardedCluster(RedisCluster):
    """RedisCluster on a Redis Cluster: bucketed records and index, per-node leases and
    sharded inboxes, leases checked by the client (docs/scale.md)."""

    _SCRIPTS: tuple[tuple[str, str], ...] = SHARDED_SCRIPTS

    def __init__(self, url: str, node_id: str, **kwargs: Any) -> None:
        super().__init__(url, node_id, mode="cluster", **kwargs)
        self._bucket_from = 0  # the sweep's bucket
        self._epoch: int | None = None  # the cluster's configuration epoch, last seen

    def _old_head(self, bucket: int) -> str:
        """What an older relay's record keys of a bucket started with (their id follows)."""
        return f"{self._prefix}{{b{bucket}}}:dev:"

    def _bucket_index(self, bucket: int) -> str:
        return f"{self._prefix}{{b{bucket}}}:presence"

    def _slot_index(self, slot: int) -> str:
        return self._bucket_index(slot)

    def _index_of(self, device_id: str) -> str:
        return self._bucket_index(bucket_of(device_id))

    def _slot_of(self, device_id: str) -> int:
        return bucket_of(device_id)

    def _lease_key(self, node: str) -> str:
        return f"{self._prefix}{{n:{node}}}:lease"

    def _inbox(self, node: str) -> str:
        return f"{self._prefix}{{n:{node}}}:inbox"

    # Inbox: sharded pub/sub on the shard that holds the node's slot.

    async def _publish(self, node: str, data: bytes) -> int:
        assert self._redis is not None
        receivers: int = await self._redis.spublish(self._inbox(node), data)
        return receivers

    async def _subscribe(self, pubsub: PubSub) -> None:
        assert isinstance(pubsub, ClusterPubSub)
        assert self._redis is not None
        await self._load_scripts()
        self._epoch = None
        await self._failed_over()  # the epoch this session starts from (it rebuilds anyway)
        await pubsub.ssubscribe(self._inbox(self.node_id))
        while True:
            msg = await pubsub.get_sharded_message(timeout=self._op_timeout)
            if msg is not None and msg.get("type") == "ssubscribe":
                return

    async def _listen(self, pubsub: PubSub) -> None:
        assert isinstance(pubsub, ClusterPubSub)
        while True:
            msg = await pubsub.get_sharded_message(timeout=1.0)
            if msg is None:
                continue
            if msg.get("type") == "smessage":
                self._receive(decode_node_message(msg["data"]))
            elif msg.get("type") == "sunsubscribe":  # the slot moved: subscribe afresh
                raise ConnectionError("inbox slot moved")

    async def _failed_over(self) -> bool:
        """Whether the cluster's epoch grew since the last beat (a replica was promoted:
        writes its primary had not replicated are lost, so the caller rebuilds). One
        command per node and beat."""
        assert isinstance(self._redis, ShardedRedis)
        async with asyncio.timeout(self._op_timeout):
            info = await self._redis.cluster_info()
        epoch = int(info.get("cluster_current_epoch", 0))
        grew = self._epoch is not None and epoch > self._epoch
        self._epoch = max(epoch, self._epoch or 0)
        if grew:  # a promoted replica has not the scripts: SCRIPT LOAD is not replicated
            async with asyncio.timeout(self._op_timeout):
                await self._redis.nodes_manager.initialize()  # who the primaries are now
            await self._load_scripts()
        return grew

    # Leases, read by the client.

    async def _keep_lease(self) -> bool:
        """SET ... GET: whether the lease was still ours; the registry learns a new one."""
        assert self._redis is not None
        async with asyncio.timeout(self._op_timeout):
            old = await self._redis.set(
                self._lease_key(self.node_id), self._lease, px=self._ttl_ms, get=True
            )
            held = text(old) == self._lease
            if not held:
                await self._redis.sadd(f"{self._prefix}nodes", f"{self.node_id}\n{self._lease}")
        return held

    async def _live(self, holders: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (node, lease) pairs are held now: one GET per distinct node."""
        assert self._redis is not None
        nodes = sorted({n for n, _ in holders})
        if not nodes:
            return set()
        if len(nodes) == 1:  # a lookup: one command, not a cluster pipeline
            lease = text(await self._redis.get(self._lease_key(nodes[0])))
            return {(n, held) for n, held in holders if held == lease}
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.get(self._lease_key(n))
            leases = dict(zip(nodes, map(text, await pipe.execute()), strict=True))
        return {(n, lease) for n, lease in holders if leases[n] == lease}

    async def _rows(self, ids: Sequence[str]) -> list[tuple[Presence, str] | None]:
        """Each device's record and the lease it names; None when absent."""
        assert self._redis is not None
        ranges = [(self._index_of(d), f"[{d}\0", f"({d}\1") for d in ids]
        if len(ids) == 1:  # a lookup: one command, not a cluster pipeline
            answers = [await self._redis.zrangebylex(*ranges[0])]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in ranges:
                    pipe.zrangebylex(*r)
                answers = await pipe.execute()
        return [_record_of(d, members) for d, members in zip(ids, answers, strict=True)]

    async def _lookup(self, ids: Sequence[str]) -> list[Presence | None]:
        rows = await self._rows(ids)
        live = await self._live({(p.node, lease) for p, lease in filter(None, rows)})
        return [row[0] if row and (row[0].node, row[1]) in live else None for row in rows]

    async def _pipe_scripts(self, calls: Any) -> list[Any]:
        """Script calls (name, keys, args) in one cluster pipeline (a batch per shard)."""
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                await self._queue(pipe, name, keys, args)
            answers: list[Any] = await pipe.execute()
        return answers

    # Listing: the buckets merged by id.

    async def _page(self, cursor: str | None, limit: int) -> Page:
        out: list[Presence] = []
        start, more = after(cursor).encode(), True
        members: list[bytes] = []
        for _ in range(_LIST_ROUNDS):
            members, more = await self._merged_members(start, limit - len(out))
            if not members:
                return Page(out, None)
            out += await self._live_records(members)
            if not more:
                return Page(out, None)
            if len(out) >= limit:
                break
            start = b"(" + members[-1]
        return Page(out, member_id(members[-1]))

    async def _live_records(self, members: Sequence[bytes]) -> list[Presence]:
        """The records of `members` whose holder's lease lives; the others are removed
        (an older relay's bare ids with their record key)."""
        assert self._redis is not None
        rows = [split_record(m) for m in members]
        live = await self._live({(p.node, lease) for _, p, lease in filter(None, rows)})
        out: list[Presence] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for m, row in zip(members, rows, strict=True):
                if row and (row[1].node, row[2]) in live:
                    out.append(row[1])
                    continue
                b = bucket_of(member_id(m))
                pipe.zrem(self._bucket_index(b), m)
                if row is None:
                    pipe.delete(self._old_head(b).encode() + m)
            if len(pipe):
                await pipe.execute()
        return out

    async def _merged_members(self, start: bytes, want: int) -> tuple[list[bytes], bool]:
        """The first `want` members from `start` (ZRANGEBYLEX form) across every bucket,
        and whether more may follow. Each bucket is read `m` members at a time; a member is
        certain once it is not past the last member read from any bucket that may hold
        more."""
        assert self._redis is not None
        per = want / BUCKETS
        m = int(per + 4 * math.sqrt(per)) + 4  # rarely a second read for uniform ids
        frontier = dict.fromkeys(range(BUCKETS), start)  # bucket -> next start
        got: list[bytes] = []
        while True:
            async with self._redis.pipeline(transaction=False) as pipe:
                for b, s in frontier.items():
                    pipe.zrangebylex(self._bucket_index(b), s, "+", 0, m)
                answers = await pipe.execute()
            reads = zip(list(frontier), answers, strict=True)
            frontier = {}
            for b, members in reads:
                got += members
                if len(members) == m:
                    frontier[b] = b"(" + members[-1]
            bound = min((s[1:] for s in frontier.values()), default=None)
            sure = sorted(x for x in got if bound is None or x <= bound)
            if len(sure) >= want or not frontier:
                return sure[:want], len(sure) > want or bool(frontier)
            m *= 4

    # Writes that span buckets: one script call per bucket.

    async def _renew(self, batch: Sequence[Presence]) -> Sequence[Any]:
        rows = await self._rows([p.device_id for p in batch])
        holders = {(p.node, lease) for p, lease in filter(None, rows)}
        live = [f"{n}\n{lease}" for n, lease in await self._live(holders)]
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(batch):
            groups.setdefault(bucket_of(p.device_id), []).append(i)
        calls = []
        for b, members in groups.items():
            args = [self.node_id, self._lease, len(live), *live]
            args += [self._member(batch[i]) for i in members]
            calls.append(("renew", [self._bucket_index(b)], args))
        async with asyncio.timeout(self._op_timeout):
            answers = await self._pipe_scripts(calls)
        out: list[Any] = [None] * (3 * len(batch))
        for members, answer in zip(groups.values(), answers, strict=True):
            for k, i in enumerate(members):
                out[3 * i : 3 * i + 3] = answer[3 * k : 3 * k + 3]
        return out

    async def _sweep(self) -> None:
        """As on one Redis, with the dead holders found by the client and passed to the
        script, bucket after bucket."""
        prefix, lock = self._prefix, f"{self._prefix}sweeping"
        assert self._redis is not None
        if self._sweep_from is None:
            async with asyncio.timeout(self._op_timeout):
                token, px = f"{prefix}sweepcheck", int(self._heartbeat_s * 1000)
                if not await self._redis.set(token, self.node_id, nx=True, px=px):
                    return  # another node reads the registry this period
                members = {
                    (node, lease): f"{node}\n{lease}"
                    for m in await self._redis.smembers(f"{prefix}nodes")
                    for node, _, lease in [text(m).rpartition("\n")]
                }
                live = await self._live(set(members))
                dead = [m for pair, m in members.items() if pair not in live]
                if not dead or not await self._redis.set(
                    lock, self.node_id, nx=True, px=2 * self._ttl_ms
                ):
                    return
            self._sweep_from, self._sweep_dead, self._bucket_from = "-", dead, 0
        for _ in range(_SWEEP_STEPS):
            b = self._bucket_from
            args = [self._old_head(b), self._sweep_from, _SWEEP_CHUNK, *self._sweep_dead]
            last = text(await self._call("sweep", [self._bucket_index(b)], args))
            self._sweep_from = "(" + last if last else "-"
            if not last:
                self._bucket_from += 1
            if self._bucket_from == BUCKETS:
                log.info("cluster: swept the devices of %d dead node(s)", len(self._sweep_dead))
                async with asyncio.timeout(self._op_timeout):
                    await self._redis.srem(f"{prefix}nodes", *self._sweep_dead)
                    await self._redis.delete(lock)
                self._sweep_from, self._sweep_dead = None, []
                return
        async with asyncio.timeout(self._op_timeout):
            await self._redis.set(lock, self.node_id, px=2 * self._ttl_ms)


def _record_of(device_id: str, members: Sequence[bytes | str]) -> tuple[Presence, str] | None:
    """Among the members of a device's range, its record and lease (None when absent)."""
    for m in members:
        row = split_record(m)
        if row is not None and row[0] == device_id:
            return row[1], row[2]
    return None
