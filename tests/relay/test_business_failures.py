"""Failures of the business service as a device sees them (docs/protocol.md §2.3, §2.6).

Each test drives a real device WebSocket against the fake business (a real aiohttp server on
loopback), checks exactly what the device receives, and then checks that the next request on
the same connection works.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from tests.relay.conftest import RelayFactory
from tests.relay.fakes import (
    Device,
    FakeBusiness,
    echo_script,
    is_end,
    is_tts_stop,
    open_stream,
    session_of,
    sse,
)

FOREIGN = "intruder-0123456789abcdef"

_LABEL = re.compile(r'(\w+)="([^"]*)"')


# ---- helpers ---------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def custom(dev: Device, ptype: str = "report", **details: Any) -> dict[str, Any]:
    """A device `custom` message whose payload carries the device's session id (§2.3)."""
    return {
        "session_id": dev.session_id,
        "type": "custom",
        "payload": {
            "auth": {"device_id": "669C4BDA13EA"},
            "type": ptype,
            "details": {"session_id": dev.session_id, **details},
        },
    }


def command(sid: str | None, n: object) -> dict[str, Any]:
    """A pass-through `message/command` event; no `session_id` key when `sid` is None."""
    event: dict[str, Any] = {"event": "message", "type": "command"}
    if sid is not None:
        event["session_id"] = sid
    event["details"] = {"n": n}
    return event


def responses(msgs: list[dict[str, Any]]) -> list[Any]:
    """The business events carried by a list of §2.4 envelopes."""
    return [m["payload"]["business_response"] for m in msgs]


def assert_envelope(m: dict[str, Any], dev: Device, request_type: str) -> None:
    """`m` is a §2.4 envelope for `dev` (the event itself is checked by the caller)."""
    assert m["session_id"] == dev.session_id
    assert m["type"] == "custom"
    p = m["payload"]
    assert set(p) == {"source", "original_request_type", "business_response", "timestamp"}
    assert p["source"] == "business_service"
    assert p["original_request_type"] == request_type
    assert isinstance(p["timestamp"], int)


def assert_error(m: dict[str, Any], dev: Device, code: str, request_type: str = "report") -> None:
    """`m` is the §2.6 error event for `code` in the §2.4 envelope."""
    assert_envelope(m, dev, request_type)
    event = m["payload"]["business_response"]
    assert event == {
        "event": "error",
        "session_id": dev.session_id,
        "details": {"code": code, "message": event["details"]["message"]},
    }
    message = event["details"]["message"]
    assert isinstance(message, str)
    assert message
    # A peer never sees an exception's text.
    for leak in ("Error", "Errno", "Traceback", "127.0.0.1"):
        assert leak not in message


async def metric(client: TestClient[Any, Any], sample: str) -> float:
    """The sum over the samples of GET /metrics that `sample` selects, e.g.
    `relay_x_total{label="v"}`: that name, with at least those labels; 0 if none."""
    name, _, selector = sample.partition("{")
    wanted = dict(_LABEL.findall(selector))
    text = await (await client.get("/metrics")).text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and wanted.items() <= s.labels.items()
    )


async def wait_metric(client: TestClient[Any, Any], sample: str, expected: float) -> None:
    """Poll GET /metrics until `sample` equals `expected` (a turn records as it finishes)."""
    value = -1.0
    try:
        async with asyncio.timeout(3):
            while (value := await metric(client, sample)) != expected:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{sample} = {value}, expected {expected}") from None


def outcome(name: str) -> str:
    return f'relay_business_requests_total{{outcome="{name}"}}'


async def next_request_works(dev: Device, fake: FakeBusiness) -> None:
    """The connection survived: with the echo business back, a custom round trip completes,
    and nothing left over from the failed turn arrives before its answer."""
    fake.script = echo_script
    await dev.send(custom(dev, "get", probe="after"))
    msgs = await dev.recv_until(is_end)
    assert [e["event"] for e in responses(msgs)] == ["message", "message_end"]
    for m in msgs:
        assert_envelope(m, dev, "get")
        assert m["payload"]["business_response"]["session_id"] == dev.session_id
    echoed = msgs[0]["payload"]["business_response"]["details"]["echo"]
    assert echoed["details"]["probe"] == "after"


async def sleep_forever(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Never answers (the test server cancels the handler when the relay hangs up)."""
    await asyncio.sleep(30)
    raise AssertionError("the relay should have given up")


# ---- connection refused, status, content type (§2.6) ----------------------------------


async def test_connection_refused_is_business_unreachable(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    port = closed_port()
    client = await make_relay(business_overrides={"url": f"http://127.0.0.1:{port}/chat"})
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    assert len(msgs) == 1
    assert_error(msgs[0], dev, "business_unreachable")
    assert str(port) not in msgs[0]["payload"]["business_response"]["details"]["message"]
    await wait_metric(client, outcome("unreachable"), 1)
    # The business comes back on the same port: the same connection's next request works.
    back = TestServer(fake.app(), host="127.0.0.1", port=port)
    await back.start_server()
    try:
        await next_request_works(dev, fake)
    finally:
        await back.close()


async def test_http_500_is_business_status(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    async def fail(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=500, text="boom: secret stack trace")

    fake.script = fail
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    assert len(msgs) == 1
    assert_error(msgs[0], dev, "business_status")
    assert "boom" not in orjson.dumps(msgs[0]).decode()
    await wait_metric(client, outcome("status"), 1)
    assert len(fake.bodies) == 1  # §2.1: never re-POSTed
    await next_request_works(dev, fake)


async def test_html_200_is_business_content_type(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def html(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        # Even SSE-looking bytes are not events when the content type is wrong.
        text = sse({"event": "message", "type": "command", "session_id": sid}).decode()
        return web.Response(text=text, content_type="text/html")

    fake.script = html
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    assert len(msgs) == 1
    assert_error(msgs[0], dev, "business_content_type")
    await wait_metric(client, outcome("content_type"), 1)
    assert len(fake.bodies) == 1
    await next_request_works(dev, fake)


async def test_reset_mid_stream_is_business_unreachable(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def reset(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        await resp.write(sse(command(session_of(body), 1)))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the TCP connection dies mid-stream
        return await sleep_forever(request, body)

    fake.script = reset
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    assert len(msgs) == 2
    assert msgs[0]["payload"]["business_response"] == command(dev.session_id, 1)
    assert_error(msgs[1], dev, "business_unreachable")
    await wait_metric(client, outcome("unreachable"), 1)
    await next_request_works(dev, fake)


# ---- timeouts (§2.6) ---------------------------------------------------------------------


async def _no_headers(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await sleep_forever(request, body)


async def _headers_only(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await open_stream(request)
    return await sleep_forever(request, body)


async def _comments_only(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    # SSE comments are not events: they must not hold off the first-event timeout.
    resp = await open_stream(request)
    for _ in range(300):
        await resp.write(b": keepalive\n\n")
        await asyncio.sleep(0.05)
    return resp


@pytest.mark.parametrize(
    "script",
    [_no_headers, _headers_only, _comments_only],
    ids=["no-headers", "headers", "comments"],
)
async def test_no_first_event_is_business_timeout(
    make_relay: RelayFactory, fake: FakeBusiness, script: Any
) -> None:
    fake.script = script
    client = await make_relay(business_overrides={"first_event_timeout_s": 0.3})
    dev = await Device.connect(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    elapsed = loop.time() - start
    assert len(msgs) == 1
    assert_error(msgs[0], dev, "business_timeout")
    assert 0.25 <= elapsed < 1.5, elapsed  # the business would have kept us 15 s or more
    await wait_metric(client, outcome("timeout"), 1)
    assert len(fake.bodies) == 1
    await next_request_works(dev, fake)


async def test_stall_mid_stream_is_business_timeout(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def stall(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        await resp.write(sse(command(session_of(body), 1)))
        return await sleep_forever(request, body)

    fake.script = stall
    client = await make_relay(business_overrides={"idle_timeout_s": 0.3})
    dev = await Device.connect(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    elapsed = loop.time() - start
    assert len(msgs) == 2
    assert_envelope(msgs[0], dev, "report")
    assert msgs[0]["payload"]["business_response"] == command(dev.session_id, 1)
    assert_error(msgs[1], dev, "business_timeout")
    assert 0.25 <= elapsed < 1.5, elapsed
    await wait_metric(client, outcome("timeout"), 1)
    await next_request_works(dev, fake)


async def test_total_timeout_ends_a_chatty_stream(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def chatty(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        for n in range(300):  # never idle, never ends
            await resp.write(sse(command(session_of(body), n)))
            await asyncio.sleep(0.05)
        return resp

    fake.script = chatty
    client = await make_relay(business_overrides={"total_timeout_s": 0.5})
    dev = await Device.connect(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    elapsed = loop.time() - start
    assert 0.45 <= elapsed < 1.5, elapsed
    assert len(msgs) >= 3
    assert [e["details"]["n"] for e in responses(msgs[:-1])] == list(range(len(msgs) - 1))
    assert_error(msgs[-1], dev, "business_timeout")
    await next_request_works(dev, fake)


# ---- malformed events, session isolation, missing message_end (§2.2, §2.3, §2.6) --------


async def test_malformed_events_are_skipped_and_counted(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        await resp.write(sse(command(sid, 1)))
        await resp.write(b"data: not json\n\n")
        await resp.write(b"data: [1,2]\n\n")
        await resp.write(sse(command(sid, 2)))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    fake.script = script
    client = await make_relay()
    dev = await Device.connect(client)
    assert await metric(client, "relay_business_bad_events_total") == 0
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    for m in msgs:
        assert_envelope(m, dev, "report")
    assert responses(msgs) == [
        command(dev.session_id, 1),
        command(dev.session_id, 2),
        {"event": "message_end", "session_id": dev.session_id},
    ]
    await wait_metric(client, "relay_business_bad_events_total", 2)
    await wait_metric(client, outcome("ok"), 1)
    await next_request_works(dev, fake)


@pytest.mark.parametrize("check", ["strict", "lenient"])
async def test_foreign_and_missing_session_ids(
    make_relay: RelayFactory, fake: FakeBusiness, check: str
) -> None:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        for event in (
            {"event": "message_end", "session_id": FOREIGN},  # must not end our request
            command(sid, 1),
            command(FOREIGN, "leak"),
            command(None, "anonymous-1"),
            command(sid, 2),
            {"event": "error", "session_id": FOREIGN, "details": {"code": "x"}},
            command(None, "anonymous-2"),
            command(FOREIGN, "leak"),
            {"event": "message_end", "session_id": sid},
        ):
            await resp.write(sse(event))
        return resp

    fake.script = script
    client = await make_relay(business_overrides={"session_check": check})
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    sid = dev.session_id
    for m in msgs:
        assert_envelope(m, dev, "report")
        assert FOREIGN not in orjson.dumps(m).decode()
        assert "leak" not in orjson.dumps(m).decode()
    end = {"event": "message_end", "session_id": sid}
    if check == "strict":
        assert responses(msgs) == [command(sid, 1), command(sid, 2), end]
        dropped = 6  # 4 foreign + 2 without session_id
    else:
        assert responses(msgs) == [
            command(sid, 1),
            command(None, "anonymous-1"),
            command(sid, 2),
            command(None, "anonymous-2"),
            end,
        ]
        dropped = 4
    await wait_metric(client, "relay_session_mismatch_dropped_total", dropped)
    await next_request_works(dev, fake)
    assert await metric(client, "relay_session_mismatch_dropped_total") == dropped


async def test_stream_without_message_end_ends_the_turn(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        await resp.write(sse(command(sid, 1)))
        await resp.write(sse(command(sid, 2)))
        return resp  # the response ends here: no message_end

    fake.script = script
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    msgs = await dev.recv_until(is_end)
    for m in msgs[:2]:
        assert_envelope(m, dev, "report")
    assert responses(msgs[:2]) == [command(dev.session_id, 1), command(dev.session_id, 2)]
    # §2.7: the device waiting for message_end is told that none is coming.
    assert len(msgs) == 3
    assert_error(msgs[2], dev, "business_incomplete")
    await wait_metric(client, outcome("incomplete"), 1)
    # The turn is over and told the device nothing more.
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}
    await next_request_works(dev, fake)


async def test_business_honouring_accept_encoding_is_understood(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_compression()  # compresses only if the request's Accept-Encoding allows
        await resp.prepare(request)
        await resp.write(sse(command(sid, 1)))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    fake.script = script
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    async with asyncio.timeout(3):  # the request is over, one way or the other
        while not (
            await metric(client, outcome("ok")) or await metric(client, outcome("incomplete"))
        ):
            await asyncio.sleep(0.02)
    await dev.send({"type": "ping"})  # everything the turn sent is queued before the pong
    msgs = await dev.recv_until(lambda m: m == {"type": "pong"})
    assert responses(msgs[:-1]) == [
        command(dev.session_id, 1),
        {"event": "message_end", "session_id": dev.session_id},
    ]


# ---- a chat answer cut by a failure (§2.6: stop speaking cleanly) ----------------------


async def test_chat_turn_failing_mid_answer_stops_speaking(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        answer = {"answer": "Hello there."}
        chat = {"event": "message", "type": "chat", "session_id": session_of(body)}
        await resp.write(sse({**chat, "details": answer}))
        return await sleep_forever(request, body)

    fake.script = script
    # The idle timeout leaves espeak-ng (~50 ms here) time to voice the answer before it fires.
    client = await make_relay(business_overrides={"idle_timeout_s": 0.6})
    dev = await Device.connect(client)
    await dev.send(custom(dev, "chat", msg="hi"))
    trace: list[Any] = []  # device messages in arrival order, audio frames as "audio"
    async with asyncio.timeout(10):
        while not trace or trace[-1] == "audio" or not is_tts_stop(trace[-1]):
            before = len(dev.audio)
            m = await dev.recv()
            trace.extend(["audio"] * (len(dev.audio) - before))
            trace.append(m)
    frames = trace.count("audio")
    assert frames > 0
    texts = [t for t in trace if t != "audio"]
    assert [t.get("type") for t in texts] == ["tts", "tts", "custom", "tts"]
    start, sentence, error, stop = texts
    assert start == {"session_id": dev.session_id, "type": "tts", "state": "start"}
    assert sentence["state"] == "sentence_start"
    assert sentence["text"] == "Hello there."
    assert_error(error, dev, "business_timeout", request_type="chat")
    assert stop["session_id"] == dev.session_id
    assert isinstance(stop["is_aborted"], bool)
    # tts start, sentence_start, every frame, then the error and the stop.
    assert trace == [start, sentence, *["audio"] * frames, error, stop]
    await wait_metric(client, outcome("timeout"), 1)
    await next_request_works(dev, fake)
    assert dev.audio[frames:] == []  # nothing more was spoken after the stop


# ---- request headers (§2.1) ------------------------------------------------------------


@pytest.mark.parametrize("token", ["t0k", ""])
async def test_business_request_headers(
    make_relay: RelayFactory, fake: FakeBusiness, token: str
) -> None:
    client = await make_relay(business_overrides={"token": token})
    dev = await Device.connect(client)
    await next_request_works(dev, fake)
    assert len(fake.headers) == 1
    headers = CIMultiDict(fake.headers[0])
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "text/event-stream"
    if token:
        assert headers["Authorization"] == "Bearer t0k"
    else:
        assert "Authorization" not in headers  # no empty "Bearer " when no token is set
