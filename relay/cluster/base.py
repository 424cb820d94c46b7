"""The cluster layer the relay talks to: presence, cross-node push and replacement
(README.md "Many processes and machines"). Here: the interface, `LocalCluster` (one node, in
memory), and what nodes say to each other, free of any transport (the messages, and the
bookkeeping of acks and inbound work); `relay.cluster.redis.RedisCluster` carries it over
Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from protocol.mcp import ToolAnswer, ToolRequest, decode_request
from protocol.node import NodeAck, NodeAsk, NodeMessage, NodePush, NodeReply, PushReason
from relay.logsafe import printable

log = logging.getLogger(__name__)

MAX_PAGE = 1000
_RECANCEL_S = 0.1  # a task still running this long after its cancel is cancelled again


@dataclass(frozen=True, slots=True)
class Presence:
    """Where a device is connected: which node, which session, since when, last heard when."""

    device_id: str
    node: str
    session_id: str
    connected_at: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class PushResult:
    """What became of a push: delivered by `node`, or why not."""

    delivered: bool
    node: str | None
    reason: PushReason | None


Deliver = Callable[[str, bytes], Awaitable[PushReason | None]]
"""(device_id, message) -> None when the local connection took the message, else why not
("rejected", or "not_supported" when the device did not declare the feature)."""
Replace = Callable[[str, str], Awaitable[None]]
"""(device_id, session_id) -> close that local connection with 4001 (docs/protocol.md §1.7)."""
ServeTools = Callable[[str, ToolRequest], Awaitable[ToolAnswer]]
"""(device_id, request) -> the answer of the local connection's MCP client (docs/protocol.md
§3.2), within the request's timeout; "offline" when the device is not here."""
LocalDevices = Callable[[], Iterable[Presence]]
"""The devices this node holds now, to rebuild presence after a Redis outage."""


class Page(NamedTuple):
    """One page of a listing and the cursor of the next one (None: no more)."""

    devices: list[Presence]
    next_cursor: str | None
    partial: bool = False  # only this node's devices: the cluster store is unreachable


class Cluster(Protocol):
    """Presence and cross-node delivery, as the relay sees them."""

    node_id: str
    ops: dict[str, int]
    errors: dict[str, int]

    @property
    def available(self) -> bool:
        """Whether the shared store answers (always true for a single node)."""
        ...

    async def start(self, deliver: Deliver, replace: Replace, local_devices: LocalDevices) -> None:
        """Begin serving: remember the callbacks, connect, subscribe."""

    async def stop(self) -> None:
        """Stop every background task; presence left behind expires on its own."""

    async def register(self, p: Presence) -> None:
        """Claim the device for this node; a holder on another node is replaced (4001)."""

    async def unregister(self, device_id: str, session_id: str) -> None:
        """Drop the device's presence, only if it is still this session's."""

    async def touch(self, device_id: str, session_id: str) -> None:
        """Note activity (last_seen); cheap, written in batches."""

    async def locate(self, device_id: str) -> Presence | None:
        """Where the device is connected, anywhere in the cluster."""

    async def list(self, cursor: str | None, limit: int) -> Page:
        """A page of every connected device in the cluster, ordered by device id."""

    async def push(self, device_id: str, message: bytes, timeout_s: float) -> PushResult:
        """Deliver `message` to the device on whichever node holds it; truly acknowledged."""

    def serve_tools(self, handler: ServeTools) -> None:
        """Answer tools requests for this node's devices with `handler`."""

    async def tools(self, device_id: str, req: ToolRequest) -> tuple[ToolAnswer, str | None]:
        """List or call the device's tools on whichever node holds it: the answer, and the
        node that gave it (docs/protocol.md §3.2)."""


def bump(counter: dict[str, int], op: str) -> None:
    """Add one to `counter[op]` (the `ops`/`errors` counters exposed for metrics)."""
    counter[op] = counter.get(op, 0) + 1


def clamp_limit(limit: int) -> int:
    """A page size between 1 and `MAX_PAGE`."""
    return max(1, min(limit, MAX_PAGE))


def page_of(devices: Iterable[Presence], cursor: str | None, limit: int) -> Page:
    """Keyset pagination by device id: the cursor is the last id of the previous page."""
    limit = clamp_limit(limit)
    ordered = sorted(
        (p for p in devices if cursor is None or p.device_id > cursor), key=lambda p: p.device_id
    )
    page = ordered[:limit]
    more = len(ordered) > limit
    return Page(page, page[-1].device_id if more else None)


async def deliver_local(
    deliver: Deliver, device_id: str, message: bytes, timeout_s: float, node: str
) -> PushResult:
    """Hand `message` to this node's connection, bounded by `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            reason = await deliver(device_id, message)
    except TimeoutError:
        return PushResult(False, node, "timeout")
    except Exception:
        log.exception("[%s] deliver failed", printable(device_id))
        return PushResult(False, node, "rejected")
    return PushResult(reason is None, node, reason)


async def answer_tools(serve: ServeTools, device_id: str, req: ToolRequest) -> ToolAnswer:
    """This node's answer to a tools request; a handler that fails answers "offline"."""
    try:
        return await serve(device_id, req)
    except Exception:
        log.exception("[%s] tools request failed", printable(device_id))
        return ToolAnswer("offline")


class NodeInbox:
    """Node-to-node bookkeeping, whatever carries the messages: pushes waiting for their
    ack, and the deliveries and replacements other nodes ask of this one, as owned tasks."""

    def __init__(self, node_id: str, max_inbound: int = 1024) -> None:
        self.node_id = node_id
        self.ops: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._local: dict[str, Presence] = {}  # this node's devices, as registered
        self._pending: dict[str, asyncio.Future[tuple[bool, PushReason | None]]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._max_inbound = max_inbound
        self._deliver: Deliver | None = None
        self._replace: Replace | None = None
        self._asks: dict[str, asyncio.Future[ToolAnswer]] = {}  # tools requests sent
        self._serve_tools: ServeTools | None = None

    def serve_tools(self, handler: ServeTools) -> None:
        """Answer tools requests for this node's devices with `handler`."""
        self._serve_tools = handler

    def _expect_reply(self) -> tuple[str, asyncio.Future[ToolAnswer]]:
        """A new request id and the future its `NodeReply` resolves; `_asks.pop` it when done."""
        rid = secrets.token_hex(8)
        self._asks[rid] = waiter = asyncio.get_running_loop().create_future()
        return rid, waiter

    async def _send(self, node: str, msg: NodeMessage) -> None:
        """Carry `msg` to `node`'s inbox: the transport's part."""
        raise NotImplementedError

    def _expect_ack(self) -> tuple[str, asyncio.Future[tuple[bool, PushReason | None]]]:
        """A new request id and the future its ack resolves; `_pending.pop` it when done."""
        rid = secrets.token_hex(8)
        self._pending[rid] = waiter = asyncio.get_running_loop().create_future()
        return rid, waiter

    def _fail_pending(self) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result((False, "redis_unavailable"))
        for asked in self._asks.values():
            if not asked.done():
                asked.set_result(ToolAnswer("redis_unavailable"))

    def _receive(self, msg: NodeMessage | None) -> None:
        """One inbox message: resolve an ack, or start a delivery or a replacement."""
        if isinstance(msg, NodeAck):
            waiter = self._pending.get(msg.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result((msg.delivered, msg.reason))
        elif isinstance(msg, NodeReply):
            asked = self._asks.get(msg.request_id)
            if asked is not None and not asked.done():
                asked.set_result(ToolAnswer(msg.reason, msg.body))
        elif msg is None:
            bump(self.errors, "bad_message")
        elif len(self._tasks) >= self._max_inbound:
            bump(self.errors, "inbound_overflow")  # the pusher times out
        elif isinstance(msg, NodePush):
            self._spawn(self._answer_push(msg))
        elif isinstance(msg, NodeAsk):
            self._spawn(self._answer_ask(msg))
        else:
            p = self._local.get(msg.device_id)
            if p is not None and p.session_id == msg.session_id:
                del self._local[msg.device_id]
            self._spawn(self._call_replace(msg.device_id, msg.session_id))

    async def _answer_push(self, m: NodePush) -> None:
        res = PushResult(False, None, "offline")
        if m.device_id in self._local and self._deliver is not None:
            res = await deliver_local(self._deliver, m.device_id, m.message, m.timeout_s, "")
        await self._send(m.sender, NodeAck(m.request_id, res.delivered, res.reason))

    async def _answer_ask(self, m: NodeAsk) -> None:
        req = decode_request(m.body)
        if req is None:
            bump(self.errors, "bad_message")
            return  # the asker times out
        answer = ToolAnswer("offline")
        if m.device_id in self._local and self._serve_tools is not None:
            answer = await answer_tools(self._serve_tools, m.device_id, req)
        await self._send(m.sender, NodeReply(m.request_id, answer.reason, answer.body))

    async def _call_replace(self, device_id: str, session_id: str) -> None:
        try:
            if self._replace is not None:
                await self._replace(device_id, session_id)
        except Exception:
            log.exception("[%s] replace callback failed", printable(device_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self, *more: asyncio.Future[None] | None) -> None:
        """Cancel `more` and every owned task and wait for them. A task that swallows its
        cancellation (a callback, or a library call that turns it into an error the task
        handles) is cancelled again, so stopping cannot hang on it."""
        tasks = {t for t in (*more, *self._tasks) if t is not None}
        pending = tasks
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
        for t in tasks:
            if not t.cancelled():
                t.exception()  # retrieved: no "never retrieved" warning at exit
        self._fail_pending()


class LocalCluster:
    """A single node: presence in memory, pushes delivered locally. A device that reconnects
    to this node is replaced by the relay itself (it holds both connections)."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self.ops: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._devices: dict[str, Presence] = {}
        self._deliver: Deliver | None = None
        self._serve_tools: ServeTools | None = None

    @property
    def available(self) -> bool:
        """A single node has no store to lose."""
        return True

    async def start(self, deliver: Deliver, replace: Replace, local_devices: LocalDevices) -> None:
        """Remember how to deliver; nothing to connect to."""
        self._deliver = deliver
        for p in local_devices():
            self._devices[p.device_id] = dataclasses.replace(p, node=self.node_id)

    async def stop(self) -> None:
        """Forget the callbacks; no pushes are delivered after this."""
        self._deliver = None

    async def register(self, p: Presence) -> None:
        """Record the device as connected here (the newest registration wins)."""
        bump(self.ops, "register")
        self._devices[p.device_id] = dataclasses.replace(p, node=self.node_id)

    async def unregister(self, device_id: str, session_id: str) -> None:
        """Forget the device if `session_id` is still its session."""
        bump(self.ops, "unregister")
        p = self._devices.get(device_id)
        if p is not None and p.session_id == session_id:
            del self._devices[device_id]

    async def touch(self, device_id: str, session_id: str) -> None:
        """Set last_seen to now if `session_id` is still the device's session."""
        bump(self.ops, "touch")
        p = self._devices.get(device_id)
        if p is not None and p.session_id == session_id:
            self._devices[device_id] = dataclasses.replace(p, last_seen=time.time())

    async def locate(self, device_id: str) -> Presence | None:
        """The device's presence, if connected."""
        bump(self.ops, "locate")
        return self._devices.get(device_id)

    async def list(self, cursor: str | None, limit: int) -> Page:
        """A page of the connected devices, ordered by device id."""
        bump(self.ops, "list")
        return page_of(self._devices.values(), cursor, limit)

    async def push(self, device_id: str, message: bytes, timeout_s: float) -> PushResult:
        """Deliver to the local connection; "offline" when the device is not here."""
        bump(self.ops, "push")
        if device_id not in self._devices or self._deliver is None:
            return PushResult(False, None, "offline")
        return await deliver_local(self._deliver, device_id, message, timeout_s, self.node_id)

    def serve_tools(self, handler: ServeTools) -> None:
        """Answer tools requests with `handler`."""
        self._serve_tools = handler

    async def tools(self, device_id: str, req: ToolRequest) -> tuple[ToolAnswer, str | None]:
        """The local connection's answer; "offline" when the device is not here."""
        bump(self.ops, "tools")
        if device_id not in self._devices or self._serve_tools is None:
            return ToolAnswer("offline"), None
        return await answer_tools(self._serve_tools, device_id, req), self.node_id
