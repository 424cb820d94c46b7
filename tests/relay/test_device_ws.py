"""The device WebSocket end to end: handshake, hello, custom pass-through, speech, abort."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from asr_tts.codec import OpusDecoder
from relay.device import link
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import (
    Device,
    FakeBusiness,
    is_end,
    is_tts_stop,
    open_stream,
    session_of,
    sse,
)


async def test_hello_gets_session_and_downlink_params(make_relay: RelayFactory) -> None:
    client = await make_relay()
    hello = {
        "type": "hello",
        "version": 1,
        "audio_params": {
            "format": "opus",
            "sample_rate": 16000,
            "channels": 1,
            "frame_duration": 60,
            "play_buffer_duration": 700,
        },
    }
    dev = await Device.connect(client, hello=hello)
    assert dev.hello["transport"] == "websocket"
    assert len(dev.session_id) >= 16
    assert dev.hello["audio_params"] == {
        "format": "opus",
        "sample_rate": 24000,
        "channels": 1,
        "frame_duration": 60,
        "play_buffer_duration": 700,
    }
    other = await Device.connect(client, device_id="AA:BB:CC:DD:EE:FF")
    assert other.session_id != dev.session_id


async def test_hello_without_audio_params_and_query_handshake(make_relay: RelayFactory) -> None:
    client = await make_relay()
    ws = await client.ws_connect("/v1/ws/?device_id=dev-1&client-id=c&protocol-version=3")
    await ws.send_str('{"type":"hello"}')
    reply = orjson.loads((await ws.receive(timeout=5)).data)
    assert reply["type"] == "hello"
    assert reply["audio_params"]["play_buffer_duration"] == 1000
    await ws.close()


async def test_no_hello_closes_4000(make_relay: RelayFactory) -> None:
    client = await make_relay(server={"hello_timeout_s": 0.3})
    ws = await client.ws_connect("/xiaozhi/v1/", headers={"Device-Id": "d1"})
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert ws.close_code == 4000


async def test_text_before_hello_is_not_ready(make_relay: RelayFactory) -> None:
    client = await make_relay()
    ws = await client.ws_connect("/xiaozhi/v1/", headers={"Device-Id": "d1"})
    await ws.send_bytes(b"\x01\x02")  # audio before hello: dropped
    await ws.send_str('{"type":"listen","state":"start"}')
    err = orjson.loads((await ws.receive(timeout=5)).data)
    assert err["type"] == "error"
    assert err["code"] == "not_ready"
    await ws.send_str('{"type":"hello"}')
    assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
    await ws.close()


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({"Device-Id": "d1"}, 401, "bad_token"),
        ({"Device-Id": "d1", "Authorization": "Bearer wrong"}, 401, "bad_token"),
        ({"Authorization": "Bearer good"}, 400, "no_device_id"),
        (
            {"Device-Id": "d1", "Authorization": "Bearer good", "Protocol-Version": "9"},
            400,
            "bad_version",
        ),
    ],
)
async def test_token_auth_rejects_before_upgrade(
    make_relay: RelayFactory, headers: dict[str, str], status: int, error_type: str
) -> None:
    client = await make_relay(auth={"mode": "tokens", "tokens": ["good"]})
    resp = await client.get(
        "/xiaozhi/v1/",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **headers,
        },
    )
    assert resp.status == status
    body = await resp.json()
    assert body["errorType"] == error_type
    assert "good" not in await resp.text()


async def test_token_auth_accepts_right_token(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"mode": "tokens", "tokens": ["good"]})
    dev = await Device.connect(client, headers={"Authorization": "Bearer good"})
    assert dev.session_id


async def test_custom_payload_reaches_business_unchanged(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    payload_text = (
        '{"auth":{"device_id":"669C4BDA13EA"},"type":"report","details":{"z":1,'
        '"a":"小智 🙂","n":1.5,"big":123456789012345678901234567890,'
        f'"session_id":"{dev.session_id}"}}}}'
    )
    await dev.ws.send_str(
        f'{{"session_id":"{dev.session_id}","type":"custom","payload":{payload_text}}}'
    )
    msgs = await dev.recv_until(is_end)
    assert fake.bodies == [payload_text.encode()]
    assert fake.headers[0]["Accept"] == "text/event-stream"
    assert [m["payload"]["business_response"]["event"] for m in msgs] == ["message", "message_end"]
    for m in msgs:
        assert m["session_id"] == dev.session_id
        assert m["type"] == "custom"
        p = m["payload"]
        assert p["source"] == "business_service"
        assert p["original_request_type"] == "report"
        assert isinstance(p["timestamp"], int)
    echoed = msgs[0]["payload"]["business_response"]["details"]["echo"]
    assert list(echoed) == ["auth", "type", "details"]
    assert echoed["details"]["a"] == "小智 🙂"


async def test_text_response_is_spoken_and_paced(make_relay: RelayFactory) -> None:
    client = await make_relay()
    for version in (1, 2, 3):
        dev = await Device.connect(
            client,
            version=version,
            hello={
                "type": "hello",
                "audio_params": {"format": "opus", "play_buffer_duration": 200},
            },
        )
        await dev.send(
            {
                "session_id": dev.session_id,
                "type": "listen",
                "state": "detect",
                "text": "hi",
                "text_response": "Hello there. How are you today?",
            }
        )
        msgs = await dev.recv_until(is_tts_stop)
        states = [m.get("state") for m in msgs]
        assert states[0] == "start"
        assert states.count("sentence_start") == 2
        assert msgs[-1]["is_aborted"] is False
        decoder = OpusDecoder(24000)
        assert dev.audio, "no audio frames"
        for frame in dev.audio:
            assert len(decoder.decode(frame)) == 1440 * 2
        # §1.6: with a 200 ms lead, sending N frames of 60 ms takes about N*60 - 200 ms.
        span = dev.audio_times[-1] - dev.audio_times[0]
        expected = len(dev.audio) * 0.06 - 0.2 - 0.06
        assert span >= expected - 0.1, (span, expected)
        # What the device holds never exceeds the play buffer plus one frame: exactly on the
        # relay's write clock (v2 headers, 1 ms resolution), and on our receive clock with
        # 60 ms for this machine's scheduling (a first frame read late reads as more lead).
        clocks = [(dev.audio_times, 0.06)]
        if version == 2:
            clocks.append(([ms / 1000 for ms in dev.audio_stamps], 0.002))
        for times, slack in clocks:
            play_end = 0.0
            for t in times:
                play_end = max(play_end, t) + 0.06
                assert play_end - t <= 0.2 + 0.06 + slack, (play_end - t, version, slack)
        await dev.ws.close()


async def test_declared_play_buffer_over_two_seconds_leads_by_two(make_relay: RelayFactory) -> None:
    """§1.6: the lead never exceeds ~2 s, whatever the hello declares (0 to 10000 ms are
    valid); the relay's hello says the lead it keeps."""
    client = await make_relay()
    hello = {"type": "hello", "audio_params": {"format": "opus", "play_buffer_duration": 10000}}
    dev = await Device.connect(client, hello=hello)
    assert dev.hello["audio_params"]["play_buffer_duration"] == 2000
    words = "one two three four five six seven eight nine ten eleven twelve thirteen"
    await dev.send(
        {
            "session_id": dev.session_id,
            "type": "listen",
            "state": "detect",
            "text": "hi",
            "text_response": f"{words}.",
        }
    )
    with contextlib.suppress(TimeoutError):  # 2.5 s of the answer (~4 s) are enough
        await dev.recv_until(is_tts_stop, timeout=2.5)
    assert len(dev.audio) * 0.06 > 2.5, len(dev.audio)  # longer than the lead
    play_end = lead = 0.0
    for t in dev.audio_times:
        play_end = max(play_end, t) + 0.06
        lead = max(lead, play_end - t)
    assert 1.5 < lead <= 2.0 + 0.06 + 0.06, lead  # 60 ms for this machine's scheduling
    await dev.ws.close()


async def test_abort_cuts_answer_and_cancels_business(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        sid = session_of(body)
        await resp.write(
            sse(
                {
                    "event": "message",
                    "type": "chat",
                    "session_id": sid,
                    "details": {"answer": "One. Two. Three. Four. Five. Six."},
                }
            )
        )
        started.set()
        await asyncio.sleep(30)
        return resp

    fake.script = slow
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send(
        {
            "session_id": dev.session_id,
            "type": "custom",
            "payload": {"type": "chat", "details": {"session_id": dev.session_id}},
        }
    )
    first = await dev.recv_until(lambda m: m.get("state") == "sentence_start")
    assert first[0]["state"] == "start"
    await started.wait()
    await dev.send({"session_id": dev.session_id, "type": "abort"})
    msgs = await dev.recv_until(is_tts_stop)
    assert msgs[-1]["is_aborted"] is True
    async with asyncio.timeout(5):
        while fake.disconnects == 0:
            await asyncio.sleep(0.02)
    # The connection stays usable.
    await dev.send({"type": "ping"})
    assert (await dev.recv_until(lambda m: m.get("type") == "pong"))[-1] == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1,2]", "bad_json"),
        ('{"type":"sing"}', "unknown_type"),
        ('{"state":"start"}', "missing_field"),
        ('{"type":"listen"}', "missing_field"),
        ('{"type":"custom"}', "missing_field"),
        ('{"type":"listen","state":"dance"}', "invalid_field"),
    ],
)
async def test_bad_text_gets_error_and_connection_stays(
    make_relay: RelayFactory, frame: str, code: str
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.ws.send_str(frame)
    err = await dev.recv()
    assert err == {
        "session_id": dev.session_id,
        "type": "error",
        "code": code,
        "message": err["message"],
    }
    assert err["message"]
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}


def ping_of(size: int) -> str:
    """A ping message of exactly `size` bytes."""
    head, tail = '{"type":"ping","pad":"', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def test_a_frame_of_max_message_bytes_passes_one_more_closes_1009(
    make_relay: RelayFactory,
) -> None:
    client = await make_relay(server={"max_message_bytes": 1024})
    dev = await Device.connect(client)
    await dev.ws.send_str(ping_of(1024))  # the limit is the largest message taken
    assert await dev.recv() == {"type": "pong"}
    await dev.ws.send_str(ping_of(1025))
    msg = await dev.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == 1009
    await asyncio.sleep(0.1)
    metrics = await (await client.get("/metrics")).text()
    assert 'relay_connections_closed_total{code="1009"} 1.0' in metrics


async def test_bad_binary_header_reported_once(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client, version=3)
    await dev.ws.send_bytes(b"\x00\x00\x00\x09abc")  # payload_size 9, 3 bytes follow
    await dev.ws.send_bytes(b"\x05\x00\x00\x01a")  # unknown type
    await dev.send({"type": "ping"})
    err = await dev.recv()
    assert (err["type"], err["code"]) == ("error", "bad_frame")
    assert await dev.recv() == {"type": "pong"}  # the second bad frame was not reported
    metrics = await (await client.get("/metrics")).text()
    assert 'relay_protocol_errors_total{code="bad_frame"} 2.0' in metrics


async def test_json_inside_v2_frame_is_a_text_message(make_relay: RelayFactory) -> None:
    from protocol.binary import FrameType, encode_frame

    client = await make_relay()
    dev = await Device.connect(client, version=2)
    await dev.ws.send_bytes(encode_frame(2, b'{"type":"ping"}', FrameType.JSON))
    assert await dev.recv() == {"type": "pong"}


async def test_reconnect_replaces_old_connection(make_relay: RelayFactory) -> None:
    client = await make_relay()
    old = await Device.connect(client)
    new = await Device.connect(client)
    msg = await old.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert old.ws.close_code == 4001
    await new.send({"type": "ping"})
    assert await new.recv() == {"type": "pong"}


async def test_device_that_cannot_keep_up_is_closed(
    make_relay: RelayFactory, fake: FakeBusiness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounded outbox: a device that stops reading is disconnected, not buffered forever."""
    # The device reads nothing, not even the close frame: the close waits out its timeout
    # before the connection is dropped and counted (5 s in the relay).
    monkeypatch.setattr(link, "CLOSE_TIMEOUT_S", 0.5)
    big = "x" * 60_000

    async def flood(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        sid = session_of(body)
        for i in range(400):  # 24 MB: far beyond socket buffers and the outbox
            await resp.write(
                sse(
                    {
                        "event": "message",
                        "type": "data",
                        "session_id": sid,
                        "details": {"i": i, "pad": big},
                    }
                )
            )
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    fake.script = flood
    client = await make_relay(server={"outbox_max": 8})
    dev = await Device.connect(client)
    await dev.send(
        {
            "session_id": dev.session_id,
            "type": "custom",
            "payload": {"type": "report", "details": {"session_id": dev.session_id}},
        }
    )
    # The device reads nothing; the relay must give up on it by itself.
    async with asyncio.timeout(15):
        while True:
            metrics = await (await client.get("/metrics")).text()
            if 'relay_connections_closed_total{code="1013"} 1.0' in metrics:
                break
            await asyncio.sleep(0.1)
    assert "relay_outbox_overflow_total 1.0" in metrics
    assert "relay_connections_active 0.0" in metrics


async def test_silent_device_is_closed_after_idle_timeout(make_relay: RelayFactory) -> None:
    client = await make_relay(server={"idle_timeout_s": 0.3})
    dev = await Device.connect(client)
    talker = await Device.connect(client, device_id="talker")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(8):  # the talker keeps talking: it stays
        await talker.send({"type": "ping"})
        assert await talker.recv() == {"type": "pong"}
        await asyncio.sleep(0.1)
    msg = await dev.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == 1000
    assert loop.time() - start < 3
    await talker.send({"type": "ping"})
    assert await talker.recv() == {"type": "pong"}


async def test_websocket_pings_keep_an_idle_client_open(make_relay: RelayFactory) -> None:
    # py-xiaozhi says nothing between turns but pings (RFC 6455) every 20 s: traffic (§1.7).
    client = await make_relay(server={"idle_timeout_s": 0.3})
    ws = await client.ws_connect(
        "/xiaozhi/v1/", headers={"Device-Id": "aa:bb:cc:dd:ee:01"}, autoping=False
    )
    await ws.ping(b"before hello")  # answered, and the hello still opens the session
    pong = await ws.receive(timeout=5)
    assert (pong.type, pong.data) == (WSMsgType.PONG, b"before hello")
    await ws.send_str('{"type": "hello", "version": 1, "transport": "websocket"}')
    assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
    await ws.pong(b"unsolicited")  # a heartbeat some clients send: ignored, not a close
    for _ in range(8):  # 0.8 s of pings alone, beyond the idle timeout
        await ws.ping()
        assert (await ws.receive(timeout=5)).type == WSMsgType.PONG
        await asyncio.sleep(0.1)
    await ws.send_str('{"type": "ping"}')
    assert orjson.loads((await ws.receive(timeout=5)).data) == {"type": "pong"}
    msg = await ws.receive(timeout=5)  # silent from now on: closed as idle
    assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 1000)


@pytest.mark.parametrize(
    ("rate", "frame_ms"), [(11025, 40), (8001, 60), (12345, 60), (16000, 60), (44100, 60)]
)
async def test_pcm_hello_at_any_rate_is_answered_with_a_downlink_that_is_sent(
    make_relay: RelayFactory, rate: int, frame_ms: int
) -> None:
    """A PCM device at a rate whose 60 ms frames are not whole samples still hears its answer:
    the relay's hello declares the downlink it really sends, and every frame has that size."""
    client = await make_relay()
    dev = await Device.connect(
        client,
        hello={
            "type": "hello",
            "audio_params": {"format": "pcm", "sample_rate": rate, "frame_duration": 20},
        },
    )
    declared = dev.hello["audio_params"]
    assert declared["format"] == "pcm"
    assert declared["channels"] == 1
    assert declared["frame_duration"] == frame_ms
    down_rate = declared["sample_rate"]
    assert down_rate == (16000 if rate in (8001, 12345) else rate)
    await dev.send(
        {"session_id": dev.session_id, "type": "listen", "state": "detect", "text": "hi"}
        | {"text_response": "Hello there."}
    )
    msgs = await dev.recv_until(is_tts_stop)
    assert [m.get("state") for m in msgs if m["type"] == "tts"][0] == "start"
    assert msgs[-1]["is_aborted"] is False
    assert dev.audio
    assert {len(f) for f in dev.audio} == {2 * down_rate * frame_ms // 1000}
    await dev.ws.close()
