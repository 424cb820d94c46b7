"""The node-to-node wire (README.md "Many processes and machines"): a push forwarded to the
node that holds the device, its acknowledgement, a device-tools request forwarded the same
way and its answer, and the request to close a device that connected elsewhere. Pure: bytes
in, messages out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast, get_args

import orjson

from protocol import jsonutil
from protocol.mcp import REASONS, ToolReason

# Why a push was not delivered; HTTP statuses are chosen from these (docs/protocol.md §4).
PushReason = Literal["offline", "timeout", "redis_unavailable", "rejected", "not_supported"]


@dataclass(frozen=True, slots=True)
class NodePush:
    """A push forwarded to the node that holds the device; answered by a `NodeAck`."""

    request_id: str
    sender: str
    device_id: str
    timeout_s: float
    message: bytes


@dataclass(frozen=True, slots=True)
class NodeAck:
    """The holding node's answer to a `NodePush`."""

    request_id: str
    delivered: bool
    reason: PushReason | None


@dataclass(frozen=True, slots=True)
class NodeReplace:
    """Asks a node to close its connection of a device that connected elsewhere (4001)."""

    device_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class NodeAsk:
    """A device-tools request (`protocol.mcp.encode_request`) forwarded to the node that
    holds the device; answered by a `NodeReply` (docs/protocol.md §3.2)."""

    request_id: str
    sender: str
    device_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class NodeReply:
    """The holding node's answer to a `NodeAsk`: why not, or the answer's JSON object."""

    request_id: str
    reason: ToolReason | None
    body: bytes


NodeMessage = NodePush | NodeAck | NodeReplace | NodeAsk | NodeReply
_REASONS: tuple[PushReason, ...] = get_args(PushReason)


def encode_node_message(msg: NodeMessage) -> bytes:
    """Node-to-node wire form: a JSON header line, then a push's message bytes untouched."""
    if isinstance(msg, NodePush):
        head = {"t": "push", "id": msg.request_id, "from": msg.sender, "dev": msg.device_id}
        return orjson.dumps({**head, "ttl": msg.timeout_s}) + b"\n" + msg.message
    if isinstance(msg, NodeAck):
        ack = {"t": "ack", "id": msg.request_id, "ok": msg.delivered, "why": msg.reason}
        return orjson.dumps(ack) + b"\n"
    if isinstance(msg, NodeAsk):
        ask = {"t": "ask", "id": msg.request_id, "from": msg.sender, "dev": msg.device_id}
        return orjson.dumps(ask) + b"\n" + msg.body
    if isinstance(msg, NodeReply):
        return (
            orjson.dumps({"t": "reply", "id": msg.request_id, "why": msg.reason}) + b"\n" + msg.body
        )
    return orjson.dumps({"t": "replace", "dev": msg.device_id, "sid": msg.session_id})


def decode_node_message(raw: bytes) -> NodeMessage | None:
    """Parse what `encode_node_message` wrote; None for anything else."""
    h, body = jsonutil.head_and_body(raw)
    if h is None:
        return None
    kind, rid, dev, sid = h.get("t"), h.get("id"), h.get("dev"), h.get("sid")
    if kind == "push" and isinstance(rid, str) and isinstance(dev, str):
        sender, ttl = h.get("from"), h.get("ttl")
        if isinstance(sender, str) and isinstance(ttl, int | float) and ttl > 0:
            return NodePush(rid, sender, dev, float(ttl), body)
    elif kind == "ack" and isinstance(rid, str) and isinstance(ok := h.get("ok"), bool):
        why = h.get("why")
        return NodeAck(rid, ok, cast(PushReason, why) if why in _REASONS else None)
    elif kind == "replace" and isinstance(dev, str) and isinstance(sid, str):
        return NodeReplace(dev, sid)
    elif kind == "ask" and isinstance(rid, str) and isinstance(dev, str):
        sender = h.get("from")
        if isinstance(sender, str):
            return NodeAsk(rid, sender, dev, body)
    elif (
        kind == "reply"
        and isinstance(rid, str)
        and ((why := h.get("why")) is None or why in REASONS)
    ):
        return NodeReply(rid, cast(ToolReason | None, why), body)
    return None
