"""The cluster layer over Redis (README.md "Many processes and machines"): presence
(relay.cluster.redis_presence), and each node's pub/sub inbox `node:{id}` (push, ack,
replace, tools ask and reply), kept by one session per node that reconnects with backoff.

A write Redis does not answer within `op_timeout_s` ends the session (Redis is away or
frozen: `available` turns false); the next session rebuilds presence from the node's
connections, and then sends the queued releases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from hashlib import sha1

from redis.asyncio.client import PubSub

from protocol.mcp import ToolAnswer, ToolRequest, encode_request
from protocol.node import (
    NodeAsk,
    NodePush,
    PushReason,
    decode_node_message,
    encode_node_message,
)
from relay.cluster.base import (
    Deliver,
    LocalDevices,
    PushResult,
    Replace,
    answer_tools,
    bump,
    deliver_local,
)
from relay.cluster.redis_client import REDIS_ERRORS as _ERRORS
from relay.cluster.redis_client import open_any
from relay.cluster.redis_presence import RedisPresence
from relay.cluster.redis_scripts import SCRIPTS

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.05
ASK_MARGIN_S = 1.0  # a tools request waits its own timeout plus this for the holder's reply


class RedisCluster(RedisPresence):
    """Presence in Redis kept alive by the owning node, pushes routed through that node's
    inbox and acknowledged, and a reconnect loop that rebuilds presence after an outage.
    One Redis, or a Sentinel-managed primary (`mode="sentinel"`, `url` the sentinels,
    `master` its name); Redis Cluster is relay.cluster.redis_sharded's."""

    _SCRIPTS: tuple[tuple[str, str], ...] = SCRIPTS

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
        mode: str = "single",
        master: str = "",
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if not 0 < heartbeat_s < presence_ttl_s:
            raise ValueError("heartbeat_s must be positive and shorter than presence_ttl_s")
        super().__init__(
            node_id,
            presence_ttl_s=presence_ttl_s,
            heartbeat_s=heartbeat_s,
            key_prefix=key_prefix,
            op_timeout_s=op_timeout_s,
        )
        self._url, self._backoff_max = url, backoff_max_s
        self._mode, self._master = mode, master
        # A publish nobody heard, while the holder's lease lives: on one Redis its node
        # died (the lease is pending); where a primary can fail over, it may be only
        # resubscribing, so "retry" rather than "offline".
        self._unheard: PushReason = "offline" if mode == "single" else "redis_unavailable"
        self._supervisor: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()

    async def start(self, deliver: Deliver, replace: Replace, local_devices: LocalDevices) -> None:
        """Connect and subscribe in the background; waits (bounded) for the first attempt."""
        self._deliver, self._replace, self._local_devices = deliver, replace, local_devices
        self._redis = r = open_any(self._url, self._op_timeout, self._mode, self._master)
        self._scripts = {name: r.register_script(text) for name, text in self._SCRIPTS}
        self._shas = {name: sha1(text.encode()).hexdigest() for name, text in self._SCRIPTS}
        self._attempted.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="cluster-redis")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * self._op_timeout):
                await self._attempted.wait()

    async def stop(self) -> None:
        """Send what is queued (bounded), cancel every task and close the client; presence
        left behind expires by TTL."""
        if self._up:
            await self.settle(self._op_timeout)
        await self._cancel_tasks(self._supervisor)
        self._supervisor = None
        if self._redis is not None:
            with contextlib.suppress(*_ERRORS):
                await self._redis.aclose()
            self._redis = None

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
                node = found.node if (found := await self._find(device_id)) else None
                if node is None or node == self.node_id:
                    return PushResult(False, None, "offline")
                msg = NodePush(rid, self.node_id, device_id, timeout_s, message)
                if await self._publish(node, encode_node_message(msg)) == 0:
                    return PushResult(False, node, self._unheard)  # its node died or is away
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
                node = found.node if (found := await self._find(device_id)) else None
                if node is None or node == self.node_id:
                    return ToolAnswer("offline"), None
                msg = NodeAsk(rid, self.node_id, device_id, encode_request(req))
                if await self._publish(node, encode_node_message(msg)) == 0:
                    if self._unheard == "offline":
                        return ToolAnswer("offline"), node  # its node died; lease pending
                    return ToolAnswer("redis_unavailable"), node  # or is resubscribing
                return await waiter, node
        except TimeoutError:
            return ToolAnswer("timeout"), node
        except _ERRORS:
            bump(self.errors, "tools")
            return ToolAnswer("redis_unavailable"), node
        finally:
            self._asks.pop(rid, None)

    async def _supervise(self) -> None:
        """Keep one connected session alive; reconnect with bounded, jittered backoff."""
        delay = _BACKOFF_MIN_S
        while True:
            connects = self.ops.get("connect", 0)
            try:
                await self._session()
            except Exception as exc:
                if self.ops.get("connect", 0) != connects:
                    delay = _BACKOFF_MIN_S  # it was up: a new outage
                if not isinstance(exc, _ERRORS):
                    log.exception("cluster: session failed")
                elif delay == _BACKOFF_MIN_S:  # one line per outage, quiet while retrying
                    log.warning("cluster: redis unavailable (%s)", type(exc).__name__)
                else:
                    log.debug("cluster: redis still unavailable (%s)", type(exc).__name__)
            bump(self.errors, "connect")
            self._attempted.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max)

    async def _session(self) -> None:
        """Subscribe, take the lease, rebuild presence, then listen and heartbeat until
        either fails."""
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._subscribe(pubsub)
            await self._keep_lease()
            await self._rebuild()
            self._up = True
            bump(self.ops, "connect")
            self._attempted.set()
            log.info("cluster: node %s connected to redis", self.node_id)
            work = (self._listen(pubsub), self._beat(), self._write_queued())
            tasks = [asyncio.create_task(w) for w in work]
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

    async def _failed_over(self) -> bool:
        """Whether a primary failed over since the last beat without ending the session
        (one Redis: a failover always ends it)."""
        return False

    async def _load_scripts(self) -> None:
        """Redis (every primary of a cluster) learns the scripts pipelines call by SHA."""
        assert self._redis is not None
        async with asyncio.timeout(self._op_timeout):
            for _, script in self._SCRIPTS:
                await self._redis.script_load(script)

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Load the scripts and subscribe to this node's inbox; once confirmed, publishes
        to it reach us."""
        await self._load_scripts()
        await pubsub.subscribe(self._inbox(self.node_id))
        while True:
            msg = await pubsub.get_message(timeout=self._op_timeout)
            if msg is not None and msg.get("type") == "subscribe":
                return

    async def _listen(self, pubsub: PubSub) -> None:
        async for msg in pubsub.listen():
            if msg.get("type") == "message":
                self._receive(decode_node_message(msg["data"]))
        raise ConnectionError("subscription ended")

    async def _beat(self) -> None:
        """Every `heartbeat_s`: renew the lease (one key, whatever the number of devices),
        write the activity noted since the last beat, and sweep dead nodes' records."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            bump(self.ops, "heartbeat")
            try:
                if not await self._keep_lease():
                    log.warning("cluster: node %s lost its lease: rebuilding", self.node_id)
                    await self._rebuild()  # its records may have been swept meanwhile
                elif await self._failed_over():
                    log.warning("cluster: a primary failed over: node %s rebuilds", self.node_id)
                    await self._rebuild()  # the writes it had not replicated are lost
                await self._write_seen()
                await self._sweep()
            except _ERRORS:
                bump(self.errors, "heartbeat")
                raise
