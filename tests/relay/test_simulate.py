"""`POST /api/v1/simulate`: what a partner sees with curl, parsed as an SSE stream."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from asr_tts.codec import OpusDecoder
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness, open_stream, session_of, sse

MAC = "66:9C:4B:DA:13:EA"
SIMULATE = "/api/v1/simulate"


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event of the simulate answer: its `event:` name and its JSON `data`."""

    name: str
    data: dict[str, Any]


def parse_sse(text: str) -> list[Event]:
    """Split an SSE body into events: blank-line separated blocks of `field: value` lines."""
    events: list[Event] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        obj = orjson.loads("\n".join(data))
        assert isinstance(obj, dict), block
        events.append(Event(name, obj))
    return events


async def simulate(
    client: TestClient[Any, Any],
    body: Any,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> list[Event]:
    """POST `body` to simulate, expect a 200 SSE answer that ends, and return its events."""
    async with asyncio.timeout(timeout):
        resp = await client.post(SIMULATE, json=body, params=params, headers=headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return parse_sse(await resp.text())


def text_events(events: list[Event]) -> list[dict[str, Any]]:
    """The device text messages of a simulate answer (audio summaries left out)."""
    return [e.data for e in events if e.name == "message"]


def is_tts(m: dict[str, Any], state: str) -> bool:
    return m.get("type") == "tts" and m.get("state") == state


def responses(events: list[Event]) -> list[dict[str, Any]]:
    """The business events carried in custom envelopes, in order."""
    out: list[dict[str, Any]] = []
    for m in text_events(events):
        if m.get("type") == "custom":
            assert m["payload"]["source"] == "business_service"
            out.append(m["payload"]["business_response"])
    return out


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def fake_entry(server: TestServer, name: str = "fake") -> dict[str, Any]:
    """A `[[business]]` table pointing at a fake business server."""
    return {
        "name": name,
        "url": str(server.make_url("/chat")),
        "first_event_timeout_s": 2.0,
        "idle_timeout_s": 2.0,
    }


# ---- chat turns ------------------------------------------------------------------------


async def test_text_turn_streams_what_a_device_would_receive(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    events = await simulate(client, {"device_id": MAC, "text": "hello"})

    first = events[0].data
    assert (events[0].name, first["type"], first["text"]) == ("message", "stt", "hello")
    sid = first["session_id"]
    assert isinstance(sid, str)
    assert len(sid) >= 16

    names = [e.name for e in events]
    assert set(names) <= {"message", "audio"}
    tts_idx = [i for i, e in enumerate(events) if e.data.get("type") == "tts"]
    start_idx = [i for i in tts_idx if is_tts(events[i].data, "start")]
    sentence_idx = [i for i in tts_idx if is_tts(events[i].data, "sentence_start")]
    audio_idx = [i for i, n in enumerate(names) if n == "audio"]
    assert len(start_idx) == 1
    assert sentence_idx, "no sentence_start"
    assert audio_idx, "no audio"
    assert start_idx[0] < sentence_idx[0] < audio_idx[0]
    assert " ".join(events[i].data["text"] for i in sentence_idx).strip() == "Echo hello."

    # tts stop (not aborted) is the last tts message, after every audio frame, and ends the stream.
    stop = events[tts_idx[-1]].data
    assert is_tts(stop, "stop")
    assert stop["is_aborted"] is False
    assert tts_idx[-1] > audio_idx[-1]
    assert tts_idx[-1] == len(events) - 1

    audio = [e.data for e in events if e.name == "audio"]
    assert [a["seq"] for a in audio] == list(range(len(audio)))
    assert all(isinstance(a["bytes"], int) and a["bytes"] > 0 for a in audio)
    assert all("audio" not in a for a in audio)  # summarised unless asked for base64

    envelopes = [m for m in text_events(events) if m["type"] == "custom"]
    assert envelopes, "no custom envelope"
    for env in envelopes:
        assert env["payload"]["original_request_type"] == "chat"
        assert isinstance(env["payload"]["timestamp"], int)
        assert env["payload"]["business_response"]["session_id"] == sid
    assert [r["event"] for r in responses(events)] == ["message_end"]

    for m in text_events(events):
        assert m["session_id"] == sid, m

    assert len(fake.bodies) == 1
    body = orjson.loads(fake.bodies[0])
    assert body["type"] == "chat"
    assert body["auth"] == {"device_id": "669C4BDA13EA"}
    assert body["details"]["msg"] == "hello"
    assert body["details"]["session_id"] == sid
    assert fake.headers[0]["Accept"] == "text/event-stream"


async def test_each_simulate_call_is_a_new_session(make_relay: RelayFactory) -> None:
    client = await make_relay()
    a = await simulate(client, {"device_id": "d1", "text": "one"})
    b = await simulate(client, {"device_id": "d1", "text": "two"})
    assert a[0].data["session_id"] != b[0].data["session_id"]


async def test_audio_base64_is_decodable_opus(make_relay: RelayFactory) -> None:
    client = await make_relay()
    events = await simulate(client, {"device_id": MAC, "text": "hello"}, params={"audio": "base64"})
    audio = [e.data for e in events if e.name == "audio"]
    assert audio
    decoder = OpusDecoder(24000)
    for a in audio:
        packet = base64.b64decode(a["audio"], validate=True)
        assert len(packet) == a["bytes"]
        assert len(decoder.decode(packet)) == 1440 * 2  # 60 ms at 24 kHz, 16-bit mono


# ---- pass-through ----------------------------------------------------------------------


async def test_custom_payload_is_passed_through(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    payload = {
        "auth": {"device_id": "669C4BDA13EA"},
        "type": "report",
        "details": {"session_id": "S1", "z": 1, "a": "小智 🙂", "events": [{"k": 1.5}]},
    }
    events = await simulate(client, {"device_id": "d", "custom": payload})

    assert len(fake.bodies) == 1
    received = orjson.loads(fake.bodies[0])
    assert received == payload
    assert list(received) == ["auth", "type", "details"]
    assert list(received["details"]) == ["session_id", "z", "a", "events"]

    got = responses(events)
    assert [r["event"] for r in got] == ["message", "message_end"]
    assert all(r["session_id"] == "S1" for r in got)
    assert got[0]["details"]["echo"] == payload
    for m in text_events(events):
        assert m["type"] == "custom", m  # no stt, no speech for a pass-through request
        assert m["payload"]["original_request_type"] == "report"
    assert not [e for e in events if e.name == "audio"]


async def test_custom_payload_is_forwarded_byte_for_byte(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    payload_text = (
        '{"type":"get","details":{"session_id":"S1","id":123456789012345678901234567890,'
        '"ratio":1.50}}'
    )
    body = '{"device_id":"d","custom":' + payload_text + "}"
    async with asyncio.timeout(10):
        resp = await client.post(SIMULATE, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 200
        await resp.read()
    assert fake.bodies == [payload_text.encode()]


async def test_custom_chat_answer_is_spoken(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    async def chat_answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        msg = {"event": "message", "type": "chat", "session_id": sid, "details": {"answer": "Hi."}}
        await resp.write(sse(msg))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    fake.script = chat_answer
    client = await make_relay()
    payload = {"type": "reset", "details": {"session_id": "S1"}}
    events = await simulate(client, {"device_id": "d", "custom": payload})
    msgs = text_events(events)
    # §2.2: the routing rule does not care which kind of request produced the event.
    assert any(is_tts(m, "sentence_start") and m["text"] == "Hi." for m in msgs)
    assert [e for e in events if e.name == "audio"]
    assert is_tts(msgs[-1], "stop")
    assert msgs[-1]["is_aborted"] is False
    assert [r["event"] for r in responses(events)] == ["message_end"]


# ---- agents ----------------------------------------------------------------------------


@pytest.fixture
async def second(aiohttp_server: Any) -> tuple[FakeBusiness, TestServer]:
    fake2 = FakeBusiness()
    server = await aiohttp_server(fake2.app())
    return fake2, server


async def test_agent_selects_business(
    make_relay: RelayFactory,
    business: tuple[FakeBusiness, TestServer],
    second: tuple[FakeBusiness, TestServer],
) -> None:
    fake1, server1 = business
    fake2, server2 = second
    client = await make_relay(business=[fake_entry(server1), fake_entry(server2, "b2")])

    events = await simulate(client, {"device_id": "d", "text": "to b2", "agent": "b2"})
    assert (len(fake1.bodies), len(fake2.bodies)) == (0, 1)
    assert orjson.loads(fake2.bodies[0])["details"]["msg"] == "to b2"
    assert is_tts(text_events(events)[-1], "stop")

    await simulate(client, {"device_id": "d", "text": "default"})
    assert (len(fake1.bodies), len(fake2.bodies)) == (1, 1)


async def test_unknown_agent_is_400(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay()
    resp = await client.post(SIMULATE, json={"device_id": "d", "text": "hi", "agent": "nope"})
    assert resp.status == 400
    body = await resp.json()
    assert body["errorType"] == "unknown_agent"
    assert fake.bodies == []


# ---- bad requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error_type"),
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b'["device_id","text"]', "bad_request"),
        (b'"hello"', "bad_request"),
        (b'{"text":"hi"}', "bad_request"),
        (b'{"device_id":"  ","text":"hi"}', "bad_request"),
        (b'{"device_id":42,"text":"hi"}', "bad_request"),
        (b'{"device_id":"d","text":"hi","custom":{"type":"get"}}', "bad_request"),
        (b'{"device_id":"d"}', "bad_request"),
        (b'{"device_id":"d","text":""}', "bad_request"),
        (b'{"device_id":"d","text":"   "}', "bad_request"),
        (b'{"device_id":"d","text":7}', "bad_request"),
        (b'{"device_id":"d","custom":[1,2]}', "bad_request"),
        (b'{"device_id":"d","custom":"reset"}', "bad_request"),
        (b'{"device_id":"d","text":"hi","agent":5}', "bad_request"),
    ],
)
async def test_bad_request_is_400_json(
    make_relay: RelayFactory, fake: FakeBusiness, raw: bytes, error_type: str
) -> None:
    client = await make_relay()
    resp = await client.post(SIMULATE, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "errorType", "hint"}
    assert body["errorType"] == error_type
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["hint"], str)
    assert fake.bodies == []


async def test_body_over_64k_is_413(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay()
    body = orjson.dumps({"device_id": "d", "text": "x" * (64 * 1024)})
    resp = await client.post(SIMULATE, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["errorType"] == "too_large"
    assert fake.bodies == []


async def test_chunked_body_over_64k_is_413(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay()
    # A body whose only fault is its size: were the limit skipped, it would be a valid
    # request with an unknown extra key.
    body = orjson.dumps({"device_id": "d", "text": "hi", "pad": "x" * (80 * 1024)})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    async with asyncio.timeout(10):
        resp = await client.post(
            SIMULATE, data=chunks(), headers={"Content-Type": "application/json"}
        )
        assert resp.status == 413
    assert fake.bodies == []


# ---- failures --------------------------------------------------------------------------


async def test_dead_business_ends_stream_with_error(make_relay: RelayFactory) -> None:
    client = await make_relay(
        business=[
            {
                "name": "dead",
                "url": f"http://127.0.0.1:{closed_port()}/chat",
                "connect_timeout_s": 1.0,
            }
        ]
    )
    events = await simulate(client, {"device_id": "d", "text": "anyone?"}, timeout=5)
    msgs = text_events(events)
    assert msgs[0]["type"] == "stt"
    errors = responses(events)
    assert [r["event"] for r in errors] == ["error"]
    assert errors[0]["details"]["code"] == "business_unreachable"
    assert is_tts(msgs[-1], "stop")
    assert msgs[-1]["is_aborted"] is False
    assert not [e for e in events if e.name == "audio"]
    sid = msgs[0]["session_id"]
    assert all(m["session_id"] == sid for m in msgs)


async def test_client_going_away_cancels_business_request(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def long_answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        answer = "One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten."
        msg = {"event": "message", "type": "chat", "session_id": sid, "details": {"answer": answer}}
        await resp.write(sse(msg))
        await asyncio.sleep(30)
        return resp

    fake.script = long_answer
    client = await make_relay()
    async with asyncio.timeout(10):
        resp = await client.post(SIMULATE, json={"device_id": "d", "text": "count"})
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"event: audio"):
                break
        resp.close()
        while fake.disconnects == 0:
            await asyncio.sleep(0.02)


# ---- API tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}, {"Authorization": "Basic k1"}],
)
async def test_api_token_required_when_configured(
    make_relay: RelayFactory, fake: FakeBusiness, headers: dict[str, str]
) -> None:
    client = await make_relay(api={"tokens": ["k1"]})
    resp = await client.post(SIMULATE, json={"device_id": "d", "text": "hi"}, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert set(body) == {"error", "errorType", "hint"}
    assert body["errorType"] == "unauthorized"
    assert "k1" not in await resp.text()
    assert fake.bodies == []


async def test_api_token_accepted(make_relay: RelayFactory) -> None:
    client = await make_relay(api={"tokens": ["k0", "k1"]})
    events = await simulate(
        client, {"device_id": "d", "text": "hi"}, headers={"Authorization": "Bearer k1"}
    )
    assert is_tts(text_events(events)[-1], "stop")


async def test_loopback_served_without_tokens(make_relay: RelayFactory) -> None:
    client = await make_relay()
    events = await simulate(client, {"device_id": "d", "text": "hi"})
    assert events[0].data["type"] == "stt"
