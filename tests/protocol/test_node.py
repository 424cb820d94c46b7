"""The node-to-node wire (protocol/node.py): bytes in, messages out, no server."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize(
    "msg",
    [
        NodePush("r1", "B", "d1", 1.5, b"\n{}\x00"),
        NodeAck("r1", True, None),
        NodeAck("r2", False, "rejected"),
        NodeAck("r3", False, "not_supported"),
        NodeReplace("d1", "s1"),
        NodeAsk("r4", "B", "d1", b'{"name":null}\n{"a":\n1}'),
        NodeReply("r4", None, b'{"tools":[]}'),
        NodeReply("r5", "timeout", b""),
    ],
)
def test_node_messages_round_trip(msg: NodeMessage) -> None:
    assert decode_node_message(encode_node_message(msg)) == msg


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b"not json\n", None),
        (b"[1]\n", None),
        (b'{"t":"push","id":"r","dev":"d","ttl":1}\n', None),  # no sender
        (b'{"t":"push","id":"r","from":"B","dev":"d","ttl":0}\n', None),
        (b'{"t":"ack","id":"r","ok":"yes"}\n', None),
        (b'{"t":"replace","dev":"d"}', None),
        (b'{"t":"other"}', None),
        (b'{"t":"ask","id":"r","dev":"d"}\n{}', None),  # no sender
        (b'{"t":"ask","id":"r","from":1,"dev":"d"}\n{}', None),
        (b'{"t":"reply","id":"r","why":"<b>"}\n', None),  # a reason we never send
        (b'{"t":"reply","id":7}\n', None),
        (b'{"t":"ack","id":"r","ok":false,"why":"<b>"}\n', NodeAck("r", False, None)),
    ],
)
def test_foreign_node_messages_are_refused_or_sanitised(raw: bytes, expected: object) -> None:
    assert decode_node_message(raw) == expected
