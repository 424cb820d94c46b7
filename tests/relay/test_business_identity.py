"""Who is asking (docs/protocol.md §2.1): every business request carries the headers the
relay vouches for, X-Relay-Device-Id and X-Relay-Session-Id, and with a signing secret an
X-Relay-Signature the business can check. The fake business (a real aiohttp server on
loopback) records each request's headers and raw body; the signature is checked here with
hmac, independently of the relay's code."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from multidict import CIMultiDict

from relay.resources import RELAY_KEY
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, is_end, is_tts_stop
from tests.relay.test_business_failures import closed_port, next_request_works

ROOT = Path(__file__).resolve().parents[2]
SECRET = "relay-signing-secret-0123"
DEVICE_TOKEN = "device-token-0123"
VICTIM = "VICTIM-DEVICE"


def verify(secret: str, header: str, body: bytes) -> int:
    """The header's `t` after checking `v1` is HMAC-SHA256(secret, "<t>.<body>") in
    lower-case hex, as a business would (docs/protocol.md §2.1)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    assert set(fields) == {"t", "v1"}, header
    t = fields["t"]
    assert t.isascii()
    assert t.isdigit()
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    return int(t)


def request_headers(fake: FakeBusiness) -> list[CIMultiDict[str]]:
    return [CIMultiDict(h) for h in fake.headers]


async def chat(dev: Device, text: str = "hello") -> list[dict[str, Any]]:
    await dev.send(
        {"session_id": dev.session_id, "type": "listen", "state": "detect", "text": text}
    )
    return await dev.recv_until(is_tts_stop)


def forged_custom(dev: Device, payload_session: str) -> dict[str, Any]:
    """A pass-through payload naming another device and another session."""
    return {
        "session_id": dev.session_id,
        "type": "custom",
        "payload": {
            "auth": {"device_id": VICTIM},
            "type": "get",
            "details": {"events": ["getBatteryLevel"], "session_id": payload_session},
        },
    }


async def test_chat_request_carries_identity_and_a_valid_signature(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(business_overrides={"signing_secret": SECRET})
    dev = await Device.connect(client, device_id="66:9c:4b:da:13:ea")
    before = time.time()
    await chat(dev)
    after = time.time()
    (headers,) = request_headers(fake)
    assert headers["X-Relay-Device-Id"] == "669C4BDA13EA"  # canonical (§1.1)
    assert headers["X-Relay-Session-Id"] == dev.session_id
    t = verify(SECRET, headers["X-Relay-Signature"], fake.bodies[0])
    assert int(before) <= t <= after
    assert orjson.loads(fake.bodies[0])["auth"]["device_id"] == "669C4BDA13EA"


async def test_forged_payload_identity_does_not_change_the_headers(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(
        auth={"mode": "tokens", "tokens": [DEVICE_TOKEN]},
        business_overrides={"signing_secret": SECRET},
    )
    headers = {"Authorization": f"Bearer {DEVICE_TOKEN}"}
    dev = await Device.connect(client, device_id="AA:BB:CC:00:11:22", headers=headers)
    other_session = "another-devices-session"
    await dev.send(forged_custom(dev, other_session))
    await dev.recv_until(is_end)  # the echo's events carry the payload's session: dropped
    (sent,) = request_headers(fake)
    # The body is the device's text, forwarded unchanged: the business sees the forgery...
    body = fake.bodies[0]
    assert orjson.loads(body)["auth"]["device_id"] == VICTIM
    # ...and the relay's headers, which say who really asked, on which connection.
    assert sent["X-Relay-Device-Id"] == "AABBCC001122"
    assert sent["X-Relay-Session-Id"] == dev.session_id
    assert VICTIM not in sent["X-Relay-Device-Id"]
    verify(SECRET, sent["X-Relay-Signature"], body)
    # A signature is bound to its bytes: it does not hold for the forged body's variants.
    with pytest.raises(AssertionError):
        verify(SECRET, sent["X-Relay-Signature"], body.replace(VICTIM.encode(), b"AABBCC001122"))


async def test_without_a_secret_the_identity_headers_are_sent_unsigned(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await chat(dev)
    await next_request_works(dev, fake)
    assert len(fake.headers) == 2
    for headers in request_headers(fake):
        assert headers["X-Relay-Device-Id"] == "669C4BDA13EA"
        assert headers["X-Relay-Session-Id"] == dev.session_id
        assert "X-Relay-Signature" not in headers


async def test_a_device_id_that_is_no_header_value_is_percent_encoded(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(business_overrides={"signing_secret": SECRET})
    device_id = "Küche 100% 设备"
    dev = await Device.connect(client, device_id=device_id)
    msgs = await chat(dev)
    assert msgs[-1]["is_aborted"] is False
    (headers,) = request_headers(fake)
    value = headers["X-Relay-Device-Id"]
    assert value.isascii()
    assert " " not in value
    assert unquote(value) == device_id
    verify(SECRET, headers["X-Relay-Signature"], fake.bodies[0])


async def test_simulate_requests_carry_the_identity_headers(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(business_overrides={"signing_secret": SECRET})
    resp = await client.post(
        "/api/v1/simulate", json={"device_id": "66-9C-4B-DA-13-EA", "text": "hello"}
    )
    assert resp.status == 200
    await resp.read()
    (headers,) = request_headers(fake)
    assert headers["X-Relay-Device-Id"] == "669C4BDA13EA"
    assert headers["X-Relay-Session-Id"]
    verify(SECRET, headers["X-Relay-Signature"], fake.bodies[0])


def documented_checkers() -> list[tuple[str, Callable[..., bool]]]:
    """`relay_signed` as each guide shows it to business authors, run as they would copy it."""
    found = []
    docs = (
        "docs/integration.md",
        "docs/zh-CN/integration.md",
        "docs/protocol.md",
        "docs/zh-CN/protocol.md",
    )
    for doc in docs:
        text = (ROOT / doc).read_text(encoding="utf-8")
        (code,) = [c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "relay_signed" in c]
        namespace: dict[str, Any] = {}
        exec(compile(code, doc, "exec"), namespace)  # noqa: S102 - our own documentation
        found.append((doc, namespace["relay_signed"]))
    return found


async def test_the_documented_check_accepts_what_the_relay_signs(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(business_overrides={"signing_secret": SECRET})
    dev = await Device.connect(client)
    await dev.send(forged_custom(dev, dev.session_id))
    await dev.recv_until(is_end)
    (headers,) = request_headers(fake)
    header, body = headers["X-Relay-Signature"], fake.bodies[0]
    t = verify(SECRET, header, body)
    for doc, relay_signed in documented_checkers():
        assert relay_signed(SECRET.encode(), header, body), doc
        assert relay_signed(SECRET.encode(), header, body, now=t + 300), doc
        assert not relay_signed(SECRET.encode(), header, body, now=t + 301), doc  # a replay
        assert not relay_signed(SECRET.encode(), header, body + b" "), doc
        assert not relay_signed(b"another secret", header, body), doc
        assert not relay_signed(SECRET.encode(), "", body), doc


async def test_the_secret_reaches_no_log_and_no_repr(
    make_relay: RelayFactory, fake: FakeBusiness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = {"signing_secret": SECRET, "token": "tok3n-0123"}
    ok = await make_relay(business_overrides=secrets)
    gone = await make_relay(
        business_overrides={**secrets, "url": f"http://127.0.0.1:{closed_port()}/chat"}
    )
    for client in (ok, gone):  # an answered turn, and one that fails and is logged
        dev = await Device.connect(client)
        await dev.send(forged_custom(dev, dev.session_id))
        await dev.recv_until(is_end)
    assert "unreachable" in caplog.text
    relay = gone.app[RELAY_KEY]
    for shown in (caplog.text, repr(relay.config), repr(relay.targets)):
        assert SECRET not in shown
        assert "tok3n-0123" not in shown
