"""This node's presence in Redis (README.md "Many processes and machines"), at a cost per
node, not per device (docs/scale.md).

Keys under `key_prefix` ("relay:"): `presence`, a sorted set all scored 0 whose members are
the devices' records (the id, a NUL, then lease, connected_at, last_seen, session_id and
node: relay.cluster.redis_scripts), so ZRANGEBYLEX pages it by id (cursor = last id) and a
page carries its records, dead members skipped and removed while listing; a claim replaces
a device's member (one script learns the previous holder) and a release removes it, with no
expiry; `lease:{node}`, the node's lease, a token new each time the process starts, kept
alive by the node's heartbeat (`SET ... PX presence_ttl_s`); a record counts only while its
node holds the lease the record names, so a crashed (or restarted) node's devices vanish
from every lookup at once, and any node's heartbeat later sweeps their records away
(`nodes`, the registry of leases, says whose lease is gone). Activity (`last_seen`) is
written by the heartbeat, only for the devices heard from since the last. Claim, release,
lookup and listing are Lua scripts (relay.cluster.redis_scripts), each one atomic step: of
two concurrent registrations the later sees the earlier and replaces it. Scripts read the
lease key of a record's node, so this targets one Redis (or a Sentinel-managed primary);
relay.cluster.redis_sharded keeps the same presence on a Redis Cluster.

Nothing a device waits for waits on Redis: `register` and `unregister` queue the claim or
release, and one writer per session sends what is queued in batches, one script call per
batch (and bucket, on a Redis Cluster) whose records the client packs, so a device costs
Python an argument, not a command of its own; after an outage the
node's connections are claimed again (`_rebuild`), which covers every queued claim. The
session that drives all this (connect, subscribe, heartbeat) is relay.cluster.redis's."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import islice
from typing import Any, TypeVar

from protocol.node import (
    NodeAck,
    NodeMessage,
    NodeReplace,
    NodeReply,
    encode_node_message,
)
from relay.cluster.base import (
    LocalDevices,
    NodeInbox,
    Page,
    Presence,
    bump,
    clamp_limit,
    page_of,
)
from relay.cluster.redis_client import REDIS_ERRORS as _ERRORS
from relay.cluster.redis_client import (
    AnyRedis,
    join_record,
    list_page,
    lookup,
    since,
    text,
)
from relay.logsafe import printable

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# A script call a writer's round sends: script, keys, args, and the claims or releases
# it carries (to read its answer by).
_Call = tuple[str, list[str], list[object], Sequence[Any]]

_BATCH = 256  # devices per rebuild or last_seen script call
_ROUND = 2048  # claims, and releases, a writer's round takes from the queue
_PER_CALL = 512  # claims or releases per script call (a bucket's, on a cluster)
_SWEEP_CHUNK = 500  # index members a sweep step reads
_SWEEP_STEPS = 20  # sweep steps per heartbeat: a dead node's records go within a few beats
_MAX_RELEASES = 10_000  # queued while Redis is away; beyond, the oldest are left to the TTL


class RedisPresence(NodeInbox):
    """This node's devices in Redis: claims and releases queued and written in batches, one
    lease for the node, activity written per heartbeat, dead nodes' records swept, and all of
    it claimed again from the node's connections after an outage (`_rebuild`)."""

    def __init__(
        self,
        node_id: str,
        *,
        presence_ttl_s: float,
        heartbeat_s: float,
        key_prefix: str,
        op_timeout_s: float,
    ) -> None:
        super().__init__(node_id)
        self._prefix, self._index = key_prefix, f"{key_prefix}presence"
        self._lease = secrets.token_urlsafe(4)  # this process's lease on presence (6 chars)
        self._touched: set[str] = set()  # devices heard from since the last heartbeat
        self._sweep_from: str | None = None  # the sweep's next ZRANGEBYLEX start, if sweeping
        self._sweep_dead: list[str] = []  # registry members the running sweep clears
        self._ttl_ms, self._heartbeat_s = int(presence_ttl_s * 1000), heartbeat_s
        self._op_timeout = op_timeout_s
        self._redis: AnyRedis | None = None
        self._scripts: dict[str, Callable[..., Awaitable[Any]]] = {}
        self._shas: dict[str, str] = {}  # script name -> SHA1, for EVALSHA in pipelines
        self._lock = asyncio.Lock()  # one writer at a time keeps claims and renewals ordered
        self._claims: dict[str, Presence] = {}  # registered here, not yet sent to Redis
        self._releases: dict[tuple[str, str], None] = {}  # (device, session), in order
        self._queued = asyncio.Event()  # wakes the writer
        self._settled = asyncio.Event()  # nothing queued
        self._settled.set()
        self._up = False  # connected and subscribed (the session sets it)
        self._local_devices: LocalDevices = lambda: ()

    @property
    def available(self) -> bool:
        """True while connected and subscribed (for readiness and metrics)."""
        return self._up

    def _slot_index(self, slot: int) -> str:
        """The index that lists a slot's devices (one here; a bucket's in a Redis Cluster)."""
        return self._index

    def _slot_of(self, device_id: str) -> int:
        """What groups devices that one script may touch together (one Redis: all)."""
        return 0

    def _by_slot(self, items: Iterable[_T], device_id: Callable[[_T], str]) -> dict[int, list[_T]]:
        groups: dict[int, list[_T]] = {}
        for item in items:
            groups.setdefault(self._slot_of(device_id(item)), []).append(item)
        return groups

    def _inbox(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

    async def register(self, p: Presence) -> None:
        """Claim the device for this node without waiting on Redis: the claim is queued, and
        a previous holder on another node gets a replace once it lands."""
        bump(self.ops, "register")
        if p.node != self.node_id:
            p = dataclasses.replace(p, node=self.node_id)
        self._local[p.device_id] = p
        self._claims[p.device_id] = p
        self._enqueued("register")

    async def unregister(self, device_id: str, session_id: str) -> None:
        """Drop the device's presence if `session_id` still holds it (queued, like claims)."""
        bump(self.ops, "unregister")
        p = self._local.get(device_id)
        if p is not None and p.session_id == session_id:
            del self._local[device_id]
        q = self._claims.get(device_id)
        if q is not None and q.session_id == session_id:
            del self._claims[device_id]  # never sent: nothing in Redis to release
        else:
            self._releases[device_id, session_id] = None
            if len(self._releases) > _MAX_RELEASES:
                del self._releases[next(iter(self._releases))]
                bump(self.errors, "unregister")
        self._enqueued("unregister")

    async def settle(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until every queued claim and release reached Redis."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._settled.wait()
        return self._settled.is_set()

    def _enqueued(self, op: str) -> None:
        if not self._up:
            bump(self.errors, op)  # applied when Redis returns
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._claims or self._releases:
            self._settled.clear()
            self._queued.set()
        else:
            self._settled.set()

    async def touch(self, device_id: str, session_id: str) -> None:
        """Note activity in memory; the next heartbeat writes last_seen to Redis."""
        bump(self.ops, "touch")
        if not self._up:
            bump(self.errors, "touch")
        p = self._local.get(device_id)
        if p is not None and p.session_id == session_id:
            self._local[device_id] = dataclasses.replace(p, last_seen=time.time())
            self._touched.add(device_id)

    async def _find(self, device_id: str) -> Presence | None:
        """The device's live presence in Redis (its record, if its node's lease lives)."""
        if not self._up or self._redis is None:
            raise ConnectionError("redis unavailable")
        (found,) = await self._lookup([device_id])
        return found

    async def _lookup(self, ids: Sequence[str]) -> list[Presence | None]:
        return await lookup(self._scripts["lookup"], self._prefix, ids)

    async def _page(self, cursor: str | None, limit: int) -> Page:
        assert self._redis is not None
        return await list_page(self._redis, self._scripts["list"], self._prefix, cursor, limit)

    async def locate(self, device_id: str) -> Presence | None:
        """The device's presence from Redis, else this node's own record of it."""
        bump(self.ops, "locate")
        found: Presence | None = None
        try:
            async with asyncio.timeout(self._op_timeout):
                found = await self._find(device_id)
        except _ERRORS:
            bump(self.errors, "locate")
        return found or self._local.get(device_id)

    async def list(self, cursor: str | None, limit: int) -> Page:
        """A page of the whole cluster by device id; this node's devices when Redis is away."""
        bump(self.ops, "list")
        limit = clamp_limit(limit)
        if self._up and self._redis is not None:
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(2 * self._op_timeout):
                    return await self._page(cursor, limit)
        bump(self.errors, "list")
        return page_of(self._local.values(), cursor, limit)._replace(partial=True)

    async def _write_queued(self) -> None:
        """The session's writer: what `register`/`unregister` queued, in batches."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._claims or self._releases:
                await self._write_batch()
            self._settled.set()

    async def _write_batch(self) -> None:
        """One pipeline of claims and releases, a script call per slot and `_PER_CALL`
        devices; on failure the releases stay queued and the error ends the session (its
        rebuild claims every device still connected)."""
        assert self._redis is not None
        claims = [self._claims.pop(d) for d in list(islice(self._claims, _ROUND))]
        releases = list(islice(self._releases, _ROUND))
        for done in releases:
            del self._releases[done]
        calls = [*self._claim_calls(claims), *self._release_calls(releases)]
        try:
            async with (
                self._lock,
                asyncio.timeout(self._op_timeout),
                self._redis.pipeline(transaction=False) as pipe,
            ):
                for script, keys, args, _ in calls:
                    await self._queue(pipe, script, keys, args)
                answers = await pipe.execute()
        except _ERRORS:
            for op, n in (("register", len(claims)), ("unregister", len(releases))):
                self.errors[op] = self.errors.get(op, 0) + n
            self._releases.update(dict.fromkeys(releases))
            raise
        for (script, _, _, batch), answer in zip(calls, answers, strict=True):
            if script == "claim":
                await self._replace_holders(batch, answer)

    def _member(self, p: Presence) -> str:
        """`p`'s index member as this node claims it (relay.cluster.redis_client)."""
        return join_record(
            p.device_id, self._lease, p.connected_at, p.last_seen, p.session_id, self.node_id
        )

    def _claim_calls(self, claims: Sequence[Presence]) -> Sequence[_Call]:
        """The claim script calls for `claims`: key the slot's index, args this node, the
        prefix, then each device's member."""
        calls: list[_Call] = []
        for slot, group in self._by_slot(claims, lambda p: p.device_id).items():
            for i in range(0, len(group), _PER_CALL):
                batch = group[i : i + _PER_CALL]
                args: list[object] = [self.node_id, self._prefix, *map(self._member, batch)]
                calls.append(("claim", [self._slot_index(slot)], args, batch))
        return calls

    def _release_calls(self, releases: Sequence[tuple[str, str]]) -> Sequence[_Call]:
        """The release script calls: key the slot's index, args each device's id and the
        session released."""
        calls: list[_Call] = []
        for slot, group in self._by_slot(releases, lambda r: r[0]).items():
            for i in range(0, len(group), _PER_CALL):
                batch = group[i : i + _PER_CALL]
                args: list[object] = [v for pair in batch for v in pair]
                calls.append(("release", [self._slot_index(slot)], args, batch))
        return calls

    async def _replace_holders(self, batch: Sequence[Presence], answer: Sequence[Any]) -> None:
        """Tell each node that held a device of `batch` before to close its connection:
        the claim script's answer is (position from 1, node, session) per such device."""
        for k in range(0, len(answer), 3):
            p, node = batch[int(answer[k]) - 1], text(answer[k + 1])
            log.info(
                "[%s] moved here from node %s: replacing there",
                printable(p.device_id),
                printable(node),
            )
            await self._send(node, NodeReplace(p.device_id, text(answer[k + 2])))

    async def _queue(
        self, pipe: Any, script: str, keys: Sequence[str], args: Sequence[object]
    ) -> None:
        """Queue a script call in a pipeline: EVALSHA alone (redis-py's script objects
        would add a SCRIPT EXISTS per pipeline). The scripts were loaded when the session
        began; a Redis that lost them fails the call, which ends the session, and the next
        one loads them again."""
        pipe.execute_command("EVALSHA", self._shas[script], len(keys), *keys, *args)

    async def _call(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        async with asyncio.timeout(self._op_timeout):
            return await self._scripts[script](keys=keys, args=args)

    async def _keep_lease(self) -> bool:
        """Set this node's lease for another `presence_ttl_s`; whether it was still held."""
        keys = [f"{self._prefix}lease:{self.node_id}", f"{self._prefix}nodes"]
        member = f"{self.node_id}\n{self._lease}"
        return bool(await self._call("lease", keys, [self._lease, self._ttl_ms, member]))

    async def _write_seen(self) -> None:
        """last_seen of the devices heard from since the last beat, in batches."""
        touched = [p for d in self._touched if (p := self._local.get(d)) is not None]
        groups = self._by_slot(touched, lambda p: p.device_id)
        self._touched.clear()
        calls = []
        for slot, seen in groups.items():
            for i in range(0, len(seen), _BATCH):
                args: list[object] = []
                for p in seen[i : i + _BATCH]:
                    args += (p.device_id, p.session_id, since(p.connected_at, p.last_seen))
                calls.append(self._call("seen", [self._slot_index(slot)], args))
        await asyncio.gather(*calls)

    async def _sweep(self) -> None:
        """When a node's lease is gone, walk the index a bounded step per beat and remove
        the records whose lease is gone. One node per heartbeat period reads the registry
        (a token key), so that costs O(nodes) per period, not per node; one node at a
        time sweeps (a lock key)."""
        prefix, lock = self._prefix, f"{self._prefix}sweeping"
        assert self._redis is not None
        if self._sweep_from is None:
            async with asyncio.timeout(self._op_timeout):
                token, px = f"{prefix}sweepcheck", int(self._heartbeat_s * 1000)
                if not await self._redis.set(token, self.node_id, nx=True, px=px):
                    return  # another node reads the registry this period
            dead = [text(m) for m in await self._call("dead", [f"{prefix}nodes"], [prefix])]
            if not dead:
                return
            async with asyncio.timeout(self._op_timeout):
                px = 2 * self._ttl_ms
                if not await self._redis.set(lock, self.node_id, nx=True, px=px):
                    return  # another node sweeps
            self._sweep_from, self._sweep_dead = "-", dead
        for _ in range(_SWEEP_STEPS):
            args: list[object] = [f"{prefix}dev:", self._sweep_from, _SWEEP_CHUNK, prefix]
            last = text(await self._call("sweep", [self._index], args))
            if not last:
                log.info("cluster: swept the devices of %d dead node(s)", len(self._sweep_dead))
                async with asyncio.timeout(self._op_timeout):
                    await self._redis.srem(f"{prefix}nodes", *self._sweep_dead)
                    await self._redis.delete(lock)
                self._sweep_from, self._sweep_dead = None, []
                return
            self._sweep_from = "(" + last
        async with asyncio.timeout(self._op_timeout):
            await self._redis.set(lock, self.node_id, px=2 * self._ttl_ms)

    async def _rebuild(self) -> None:
        """Claim this node's devices again from its connections (the truth after an outage
        or a lapsed lease): each record absent, dead, this node's, or older is claimed,
        a newer holder elsewhere closes ours (4001)."""
        bump(self.ops, "rebuild")
        try:
            fresh = list(self._local_devices())
        except Exception:
            log.exception("cluster: local_devices() failed; keeping the known devices")
            fresh = list(self._local.values())
        self._local = {p.device_id: dataclasses.replace(p, node=self.node_id) for p in fresh}
        self._claims.clear()  # the rebuild claims them
        self._touched.clear()  # and writes their last_seen
        self._wake_writer()
        ids = list(self._local)
        for i in range(0, len(ids), _BATCH):
            async with self._lock:
                # A device whose claim is queued since is not rebuilt: its claim comes first.
                batch = [
                    self._local[d]
                    for d in ids[i : i + _BATCH]
                    if d in self._local and d not in self._claims
                ]
                try:
                    answer = await self._renew(batch) if batch else []
                except _ERRORS:
                    bump(self.errors, "rebuild")
                    raise
            await self._settle_rebuilt(batch, answer)

    async def _renew(self, batch: Sequence[Presence]) -> Sequence[Any]:
        """Claim `batch` again (the renew script): per device status, holder, session."""
        args = [self.node_id, self._lease, self._prefix, *map(self._member, batch)]
        answer: Sequence[Any] = await self._call("renew", [self._index], args)
        return answer

    async def _settle_rebuilt(self, batch: Sequence[Presence], answer: Sequence[Any]) -> None:
        """Act on the rebuild script's answer: replace on whichever side is older."""
        for n, p in enumerate(batch):
            status, holder, holder_session = answer[3 * n : 3 * n + 3]
            if status == 2:  # a newer connection on another node: close ours (4001)
                if (q := self._local.get(p.device_id)) and q.session_id == p.session_id:
                    del self._local[p.device_id]
                self._spawn(self._call_replace(p.device_id, p.session_id))
            elif status == 1 and text(holder) not in ("", self.node_id):
                await self._send(text(holder), NodeReplace(p.device_id, text(holder_session)))

    async def _publish(self, node: str, data: bytes) -> int:
        """Publish to `node`'s inbox; how many subscribers got it."""
        assert self._redis is not None
        receivers: int = await self._redis.publish(self._inbox(node), data)
        return receivers

    async def _send(self, node: str, msg: NodeMessage) -> None:
        op = {NodeAck: "ack", NodeReply: "reply"}.get(type(msg), "replace")
        bump(self.ops, op)
        try:
            if self._redis is None:
                raise ConnectionError("stopped")
            async with asyncio.timeout(self._op_timeout):
                await self._publish(node, encode_node_message(msg))
        except _ERRORS:
            bump(self.errors, op)
