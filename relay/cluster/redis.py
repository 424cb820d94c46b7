"""The cluster layer over Redis (README.md "Many processes and machines").

Keys under `key_prefix` ("relay:"): `dev:{id}`, a hash (node, session_id, connected_at,
last_seen) expiring after `presence_ttl_s` unless the owning node's heartbeat renews it, so
a crashed node's devices vanish on their own; `devices`, a sorted set of ids all scored 0,
so ZRANGEBYLEX pages it by id (cursor = last id), where members whose hash expired are
skipped and removed while listing; `node:{id}`, a node's pub/sub inbox (push, ack, replace).
Claim, release and renewal are Lua scripts, each one atomic step: of two concurrent
registrations the later sees the earlier and replaces it. Scripts touch several keys, so
this targets one Redis (or a Sentinel-managed primary), not Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from protocol.mcp import ToolAnswer, ToolRequest, encode_request
from protocol.node import (
    NodeAck,
    NodeAsk,
    NodeMessage,
    NodePush,
    NodeReplace,
    NodeReply,
    decode_node_message,
    encode_node_message,
)
from relay.cluster.base import (
    Deliver,
    LocalDevices,
    NodeInbox,
    Page,
    Presence,
    PushResult,
    Replace,
    answer_tools,
    bump,
    clamp_limit,
    deliver_local,
    page_of,
)
from relay.cluster.redis_scripts import SCRIPTS
from relay.logsafe import printable

log = logging.getLogger(__name__)

POOL_SIZE = 64  # connections to Redis per node; more callers wait for one

_ERRORS = (RedisError, OSError)  # OSError includes TimeoutError from asyncio.timeout()
_BATCH = 256  # devices per renewal script call
_LIST_ROUNDS = 8  # refills of a page thinned by expired members
_BACKOFF_MIN_S = 0.05
ASK_MARGIN_S = 1.0  # a tools request waits its own timeout plus this for the holder's reply


def _text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")


def _presence(device_id: str, row: Mapping[Any, Any]) -> Presence | None:
    try:
        node, session = _text(row[b"node"]), _text(row[b"session_id"])
        return Presence(
            device_id, node, session, float(row[b"connected_at"]), float(row[b"last_seen"])
        )
    except (KeyError, ValueError):  # expired meanwhile, or not written by us
        return None


class RedisCluster(NodeInbox):
    """Presence in Redis kept alive by the owning node, pushes routed through that node's
    inbox and acknowledged, and a reconnect loop that rebuilds presence after an outage."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        presence_ttl_s: float = 30,
        heartbeat_s: float = 10,
        key_prefix: str = "relay:",
        op_timeout_s: float = 2.0,
        backoff_max_s: float = 5.0,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if not 0 < heartbeat_s < presence_ttl_s:
            raise ValueError("heartbeat_s must be positive and shorter than presence_ttl_s")
        super().__init__(node_id)
        self._url, self._prefix, self._index = url, key_prefix, f"{key_prefix}devices"
        self._ttl_ms, self._heartbeat_s = int(presence_ttl_s * 1000), heartbeat_s
        self._op_timeout, self._backoff_max = op_timeout_s, backoff_max_s
        self._redis: Redis | None = None
        self._scripts: dict[str, Callable[..., Awaitable[Any]]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one writer at a time keeps claims and renewals ordered
        self._attempted = asyncio.Event()
        self._up = False
        self._local_devices: LocalDevices = lambda: ()

    @property
    def available(self) -> bool:
        """True while connected and subscribed (for readiness and metrics)."""
        return self._up

    def _key(self, device_id: str) -> str:
        return f"{self._prefix}dev:{device_id}"

    def _inbox(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

    async def start(self, deliver: Deliver, replace: Replace, local_devices: LocalDevices) -> None:
        """Connect and subscribe in the background; waits (bounded) for the first attempt."""
        self._deliver, self._replace, self._local_devices = deliver, replace, local_devices
        # One quick retry for a stale pooled socket; outages are the supervisor's business.
        t = self._op_timeout
        # A blocking pool: under a burst of pushes, callers wait (bounded by op_timeout) for a
        # connection instead of failing with MaxConnectionsError (docs/performance.md §13).
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=POOL_SIZE,
            timeout=t,
            socket_connect_timeout=t,
            socket_timeout=t,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis = r = Redis(connection_pool=pool)
        self._scripts = {name: r.register_script(text) for name, text in SCRIPTS}
        self._attempted.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="cluster-redis")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * self._op_timeout):
                await self._attempted.wait()

    async def stop(self) -> None:
        """Cancel every task and close the client; presence left behind expires by TTL."""
        await self._cancel_tasks(self._supervisor)
        self._supervisor = None
        if self._redis is not None:
            with contextlib.suppress(*_ERRORS):
                await self._redis.aclose()
            self._redis = None

    async def register(self, p: Presence) -> None:
        """Claim the device atomically; a previous holder on another node gets a replace."""
        bump(self.ops, "register")
        p = dataclasses.replace(p, node=self.node_id)
        self._local[p.device_id] = p
        args = (p.device_id, self.node_id, p.session_id, p.connected_at, p.last_seen)
        prev = await self._write("register", "claim", p.device_id, *args, self._ttl_ms)
        if prev is not None and (node := _text(prev[0])) and node != self.node_id:
            log.info(
                "[%s] moved here from node %s: replacing there",
                printable(p.device_id),
                printable(node),
            )
            await self._send(node, NodeReplace(p.device_id, _text(prev[1])))

    async def unregister(self, device_id: str, session_id: str) -> None:
        """Drop the device's presence if `session_id` still holds it."""
        bump(self.ops, "unregister")
        p = self._local.get(device_id)
        if p is not None and p.session_id == session_id:
            del self._local[device_id]
        await self._write("unregister", "release", device_id, device_id, session_id)

    async def touch(self, device_id: str, session_id: str) -> None:
        """Note activity in memory; the next heartbeat writes last_seen to Redis."""
        bump(self.ops, "touch")
        if not self._up:
            bump(self.errors, "touch")
        p = self._local.get(device_id)
        if p is not None and p.session_id == session_id:
            self._local[device_id] = dataclasses.replace(p, last_seen=time.time())

    async def locate(self, device_id: str) -> Presence | None:
        """The device's presence from Redis, else this node's own record of it."""
        bump(self.ops, "locate")
        try:
            if not self._up or self._redis is None:
                raise ConnectionError("redis unavailable")
            async with asyncio.timeout(self._op_timeout):
                row = await self._redis.hgetall(self._key(device_id))
        except _ERRORS:
            bump(self.errors, "locate")
            row = {}
        return _presence(device_id, row) or self._local.get(device_id)

    async def list(self, cursor: str | None, limit: int) -> Page:
        """A page of the whole cluster by device id; this node's devices when Redis is away."""
        bump(self.ops, "list")
        limit = clamp_limit(limit)
        if self._up and self._redis is not None:
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(2 * self._op_timeout):
                    return await self._list_redis(self._redis, cursor, limit)
        bump(self.errors, "list")
        return page_of(self._local.values(), cursor, limit)._replace(partial=True)

    async def push(self, device_id: str, message: bytes, timeout_s: float) -> PushResult:
        """Deliver here if the device is local, else through its node's inbox and an ack."""
        bump(self.ops, "push")
        if device_id in self._local and self._deliver is not None:
            return await deliver_local(self._deliver, device_id, message, timeout_s, self.node_id)
        r = self._redis
        if not self._up or r is None:
            return PushResult(False, None, "redis_unavailable")
        rid, waiter = self._expect_ack()
        node: str | None = None
        try:
            async with asyncio.timeout(timeout_s):
                node = _text(await r.hget(self._key(device_id), "node")) or None
                if node is None or node == self.node_id:
                    return PushResult(False, None, "offline")
                msg = NodePush(rid, self.node_id, device_id, timeout_s, message)
                if await r.publish(self._inbox(node), encode_node_message(msg)) == 0:
                    return PushResult(False, node, "offline")  # its node died; TTL pending
                delivered, reason = await waiter
                return PushResult(delivered, node, reason)
        except TimeoutError:
            return PushResult(False, node, "timeout")
        except _ERRORS:
            bump(self.errors, "push")
            return PushResult(False, node, "redis_unavailable")
        finally:
            self._pending.pop(rid, None)

    async def tools(self, device_id: str, req: ToolRequest) -> tuple[ToolAnswer, str | None]:
        """Answer here if the device is local, else ask its node through its inbox; the
        asker waits the request's timeout and a margin, the holder answers within it."""
        bump(self.ops, "tools")
        if device_id in self._local and self._serve_tools is not None:
            return await answer_tools(self._serve_tools, device_id, req), self.node_id
        r = self._redis
        if not self._up or r is None:
            return ToolAnswer("redis_unavailable"), None
        rid, waiter = self._expect_reply()
        node: str | None = None
        try:
            async with asyncio.timeout(req.timeout_s + ASK_MARGIN_S):
                node = _text(await r.hget(self._key(device_id), "node")) or None
                if node is None or node == self.node_id:
                    return ToolAnswer("offline"), None
                msg = NodeAsk(rid, self.node_id, device_id, encode_request(req))
                if await r.publish(self._inbox(node), encode_node_message(msg)) == 0:
                    return ToolAnswer("offline"), node  # its node died; TTL pending
                return await waiter, node
        except TimeoutError:
            return ToolAnswer("timeout"), node
        except _ERRORS:
            bump(self.errors, "tools")
            return ToolAnswer("redis_unavailable"), node
        finally:
            self._asks.pop(rid, None)

    async def _write(self, op: str, script: str, device_id: str, *args: object) -> Any:
        """Run a claim/release script; a no-op counted in `errors` when Redis is away."""
        if not self._up:
            bump(self.errors, op)
            return None
        try:
            async with self._lock, asyncio.timeout(self._op_timeout):
                keys = (self._key(device_id), self._index)
                return await self._scripts[script](keys=keys, args=args)
        except _ERRORS as exc:
            bump(self.errors, op)
            log.warning("[%s] cluster %s failed: %s", printable(device_id), op, type(exc).__name__)
            return None

    async def _list_redis(self, r: Redis, cursor: str | None, limit: int) -> Page:
        out: list[Presence] = []
        start = "-" if cursor is None else "(" + cursor
        for _ in range(_LIST_ROUNDS):
            want = limit - len(out)
            ids = [_text(raw) for raw in await r.zrangebylex(self._index, start, "+", 0, want)]
            if not ids:
                return Page(out, None)
            async with r.pipeline(transaction=False) as pipe:
                for device_id in ids:
                    pipe.hgetall(self._key(device_id))
                rows = await pipe.execute()
            found = [_presence(d, row) for d, row in zip(ids, rows, strict=True)]
            out += [p for p in found if p is not None]
            if stale := [d for d, p in zip(ids, found, strict=True) if p is None]:
                keys = [*map(self._key, stale), self._index]
                await self._scripts["prune"](keys=keys, args=stale)
            if len(ids) < want:
                return Page(out, None)
            if len(out) >= limit:
                break
            start = "(" + ids[-1]
        return Page(out, ids[-1])

    async def _supervise(self) -> None:
        """Keep one connected session alive; reconnect with bounded, jittered backoff."""
        delay = _BACKOFF_MIN_S
        while True:
            connects = self.ops.get("connect", 0)
            try:
                await self._session()
            except _ERRORS as exc:  # loud once per outage, quiet while retrying
                level = logging.WARNING if delay == _BACKOFF_MIN_S else logging.DEBUG
                log.log(level, "cluster: redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("cluster: session failed")
            bump(self.errors, "connect")
            self._attempted.set()
            if self.ops.get("connect", 0) != connects:
                delay = _BACKOFF_MIN_S
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max)

    async def _session(self) -> None:
        """Subscribe, rebuild presence, then listen and heartbeat until either fails."""
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(self._op_timeout):
                await pubsub.subscribe(self._inbox(self.node_id))
                while True:  # after the confirmation, publishes to the inbox reach us
                    msg = await pubsub.get_message(timeout=self._op_timeout)
                    if msg is not None and msg.get("type") == "subscribe":
                        break
            await self._renew(rebuild=True)
            self._up = True
            bump(self.ops, "connect")
            self._attempted.set()
            log.info("cluster: node %s connected to redis", self.node_id)
            tasks = [asyncio.create_task(self._listen(pubsub)), asyncio.create_task(self._beat())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            self._up = False
            self._fail_pending()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(self._op_timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self, pubsub: PubSub) -> None:
        async for msg in pubsub.listen():
            if msg.get("type") == "message":
                self._receive(decode_node_message(msg["data"]))
        raise ConnectionError("subscription ended")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._renew(rebuild=False)

    async def _renew(self, *, rebuild: bool) -> None:
        """Renew this node's devices, recreate missing ones, yield to newer holders. When
        rebuilding after an outage, the relay's own connections are the truth."""
        op = "rebuild" if rebuild else "heartbeat"
        bump(self.ops, op)
        if rebuild:
            try:
                fresh = list(self._local_devices())
            except Exception:
                log.exception("cluster: local_devices() failed; keeping the known devices")
                fresh = list(self._local.values())
            self._local = {p.device_id: dataclasses.replace(p, node=self.node_id) for p in fresh}
        ids = list(self._local)
        for i in range(0, len(ids), _BATCH):
            async with self._lock:
                batch = [self._local[d] for d in ids[i : i + _BATCH] if d in self._local]
                args: list[object] = [self.node_id, self._ttl_ms, int(rebuild)]
                for p in batch:
                    args += (p.device_id, p.session_id, p.connected_at, p.last_seen)
                keys = [self._index, *(self._key(p.device_id) for p in batch)]
                try:
                    async with asyncio.timeout(self._op_timeout):
                        answer = await self._scripts["renew"](keys=keys, args=args) if batch else []
                except _ERRORS:
                    bump(self.errors, op)
                    raise
            for n, p in enumerate(batch):
                status, holder, holder_session = answer[3 * n : 3 * n + 3]
                if status == 2:  # a newer connection on another node: close ours (4001)
                    if (q := self._local.get(p.device_id)) and q.session_id == p.session_id:
                        del self._local[p.device_id]
                    self._spawn(self._call_replace(p.device_id, p.session_id))
                elif status == 1 and _text(holder) not in ("", self.node_id):
                    await self._send(_text(holder), NodeReplace(p.device_id, _text(holder_session)))

    async def _send(self, node: str, msg: NodeMessage) -> None:
        op = (
            "ack"
            if isinstance(msg, NodeAck)
            else "reply"
            if isinstance(msg, NodeReply)
            else "replace"
        )
        bump(self.ops, op)
        try:
            if self._redis is None:
                raise ConnectionError("stopped")
            async with asyncio.timeout(self._op_timeout):
                await self._redis.publish(self._inbox(node), encode_node_message(msg))
        except _ERRORS:
            bump(self.errors, op)
