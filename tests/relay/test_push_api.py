"""The devices API on one node (LocalCluster): push a command, speech or a device-native
message to a connected device, list and look up presence, API tokens, validation and the push
metric (docs/protocol.md §1.5, §2.4, §4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from relay.http.devices import MAX_PUSH_BODY, MAX_SPEAK_CHARS
from relay.resources import RELAY_KEY
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, is_tts_stop
from tests.relay.test_api import scrape, value

MAC = "66:9C:4B:DA:13:EA"
CANONICAL = "669C4BDA13EA"
DEVICES = "/api/v1/devices"


def messages_url(device_id: str) -> str:
    return f"{DEVICES}/{device_id}/messages"


def node_of(client: TestClient[Any, Any]) -> str:
    """The node id this single relay reports as the holder of its devices."""
    app = client.app
    assert app is not None
    node: str = app[RELAY_KEY].cluster.node_id
    return node


async def recv_raw(dev: Device, timeout: float = 5.0) -> str:
    """The next text message exactly as it came over the wire (audio frames are kept aside)."""
    while True:
        msg = await dev.ws.receive(timeout=timeout)
        if msg.type == WSMsgType.BINARY:
            dev.audio.append(msg.data)
            continue
        assert msg.type == WSMsgType.TEXT, (msg.type, msg.data)
        text: str = msg.data
        return text


async def push(
    client: TestClient[Any, Any],
    device_id: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        messages_url(device_id),
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    answer = orjson.loads(await resp.read())
    assert isinstance(answer, dict)
    return resp.status, answer


# Unusual spacing, key order not alphabetical, an integer beyond 64 bits, a number written
# 1.50, non-ASCII text and an escaped character: all must reach the device byte for byte.
COMMAND_TEXT = (
    '{ "type" :"command",  "event":"message",\n "details": {"actions":'
    '[{"action":"wag_tail","params":{"duration":3}}],'
    ' "big": 123456789012345678901234567890, "ratio": 1.50, "name":"小智 \\u00e9"} }'
)


async def test_push_command_reaches_device_byte_identical(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client, device_id=MAC)
    before = time.time()
    status, answer = await push(client, CANONICAL, b'{"command" : ' + COMMAND_TEXT.encode() + b" }")
    assert status == 200, answer
    assert answer == {"delivered": True, "node": node_of(client)}

    raw = await recv_raw(dev)
    # The §2.4 envelope carries the command's own text, not a re-serialisation.
    assert '"business_response":' + COMMAND_TEXT + ',"timestamp":' in raw
    msg = orjson.loads(raw.replace("123456789012345678901234567890", "0"))
    assert msg["session_id"] == dev.session_id
    assert msg["type"] == "custom"
    payload = msg["payload"]
    assert list(payload) == ["source", "original_request_type", "business_response", "timestamp"]
    assert payload["source"] == "business_service"
    assert payload["original_request_type"] == "push"
    assert payload["business_response"]["details"]["name"] == "小智 é"
    assert before * 1000 - 1000 <= payload["timestamp"] <= time.time() * 1000 + 1000


async def test_push_speak_is_spoken(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    body = {"speak": "Hello there.", "voice": {"speed_ratio": 1.2}}
    status, answer = await push(client, MAC, orjson.dumps(body))
    assert status == 200, answer
    assert answer == {"delivered": True, "node": node_of(client)}
    msgs = await dev.recv_until(is_tts_stop)
    assert [(m["type"], m.get("state")) for m in msgs] == [
        ("tts", "start"),
        ("tts", "sentence_start"),
        ("tts", "stop"),
    ]
    assert msgs[1]["text"] == "Hello there."
    assert msgs[-1]["is_aborted"] is False
    assert all(m["session_id"] == dev.session_id for m in msgs)
    assert len(dev.audio) >= 5, "no speech audio"


async def test_push_speak_honours_the_voice_speed(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    frames: dict[float, int] = {}
    for speed in (0.6, 2.0):
        dev.audio.clear()
        body = {"speak": "One two three four.", "voice": {"speed_ratio": speed}}
        status, _ = await push(client, MAC, orjson.dumps(body))
        assert status == 200
        await dev.recv_until(is_tts_stop)
        frames[speed] = len(dev.audio)
    assert frames[2.0] < 0.7 * frames[0.6], frames


NOTIFY_HELLO = {
    "type": "hello",
    "version": 1,
    "transport": "websocket",
    "features": {"aec": True, "notify": {"config_updated": True}},  # no mcp: no initialize
}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"type": "llm", "emotion": "happy"}, id="llm"),
        pytest.param({"type": "llm", "text": "🤔", "emotion": "thinking"}, id="llm-text"),
        pytest.param({"type": "llm", "emotion": "dizzy"}, id="llm-unknown-word"),
        pytest.param(
            {
                "type": "alert",
                "status": "Reminder",
                "message": "Time for a walk",
                "emotion": "happy",
            },
            id="alert",
        ),
        pytest.param({"type": "system", "command": "reboot"}, id="system"),
        pytest.param({"type": "notify", "event": "config_updated"}, id="notify"),
    ],
)
async def test_push_device_message_reaches_device_with_its_session_id(
    make_relay: RelayFactory, message: dict[str, Any]
) -> None:
    client = await make_relay()
    dev = await Device.connect(client, hello=NOTIFY_HELLO)
    status, answer = await push(client, MAC, orjson.dumps({"device": message}))
    assert status == 200, answer
    assert answer == {"delivered": True, "node": node_of(client)}
    raw = await recv_raw(dev)
    assert orjson.loads(raw) == {"session_id": dev.session_id, **message}
    assert raw.startswith('{"session_id":')  # §1.5: the relay's id, as on every message


async def test_push_device_message_replaces_the_callers_session_id(
    make_relay: RelayFactory,
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    body = (
        b'{"device":{"session_id":"forged", "type":"system","command":"reboot",'
        b' "n": 123456789012345678901234567890}}'
    )
    status, answer = await push(client, MAC, body)
    assert (status, answer["delivered"]) == (200, True)
    # The relay's id first, the caller's other members as written (the big integer exact).
    assert await recv_raw(dev) == (
        f'{{"session_id":"{dev.session_id}","type":"system","command":"reboot",'
        '"n":123456789012345678901234567890}'
    )


async def test_push_device_message_is_sent_beside_speech(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    status, _ = await push(client, MAC, b'{"speak":"One two three four five six."}')
    assert status == 200
    assert (await dev.recv())["state"] == "start"
    status, _ = await push(client, MAC, b'{"device":{"type":"llm","emotion":"sad"}}')
    assert status == 200
    msgs = await dev.recv_until(is_tts_stop)
    emotions = [m for m in msgs if m["type"] == "llm"]
    assert emotions == [{"session_id": dev.session_id, "type": "llm", "emotion": "sad"}]
    assert msgs[-1]["is_aborted"] is False
    assert msgs.index(emotions[0]) < len(msgs) - 1, "the emotion waited for the speech to end"


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param(None, id="no-features"),
        pytest.param({**NOTIFY_HELLO, "features": {"aec": True}}, id="no-notify"),
        pytest.param(
            {**NOTIFY_HELLO, "features": {"notify": {"config_updated": False}}}, id="declared-false"
        ),
    ],
)
async def test_push_notify_to_a_device_without_the_feature_is_not_delivered(
    make_relay: RelayFactory, hello: dict[str, Any] | None
) -> None:
    client = await make_relay()
    dev = await Device.connect(client, hello=hello)
    status, answer = await push(
        client, MAC, b'{"device":{"type":"notify","event":"config_updated"}}'
    )
    assert status == 409, answer
    assert answer["delivered"] is False
    assert (answer["reason"], answer["errorType"]) == ("not_supported", "not_supported")
    assert answer["node"] == node_of(client)
    assert "features.notify.config_updated" in answer["hint"]
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # nothing was sent before the pong
    # Other device messages still reach it.
    status, answer = await push(client, MAC, b'{"device":{"type":"llm","emotion":"happy"}}')
    assert (status, answer["delivered"]) == (200, True)
    assert orjson.loads(await recv_raw(dev))["emotion"] == "happy"


async def test_device_id_as_mac_matches_canonical_id(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client, device_id="66:9c:4b:da:13:ea")
    for given in (MAC, "66-9C-4B-DA-13-EA", CANONICAL.lower()):
        status, answer = await push(client, given, b'{"command":{"event":"message","n":1}}')
        assert (status, answer["delivered"]) == (200, True), given
        raw = await recv_raw(dev)
        assert '"business_response":{"event":"message","n":1}' in raw
    resp = await client.get(f"{DEVICES}/{MAC}")
    assert resp.status == 200
    assert (await resp.json())["device_id"] == CANONICAL


async def test_push_to_offline_device_is_404(make_relay: RelayFactory) -> None:
    client = await make_relay()
    status, answer = await push(client, "nobody", b'{"command":{"event":"message"}}')
    assert status == 404
    assert answer["delivered"] is False
    assert answer["reason"] == "offline"
    assert answer["errorType"] == "offline"
    assert answer["error"]
    assert answer["hint"]


async def test_push_after_device_left_is_offline(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.ws.close()
    status, answer = 0, dict[str, Any]()
    for _ in range(50):  # the relay notices the close on its own schedule: bounded
        status, answer = await push(client, MAC, b'{"speak":"anyone?"}')
        if status == 404:
            break
        await asyncio.sleep(0.02)
    assert status == 404, answer
    assert answer["reason"] == "offline"


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        pytest.param(b"{not json", "bad_json", id="not-json"),
        pytest.param(b"\xff\xfe", "bad_json", id="not-utf8"),
        pytest.param(b"", "bad_json", id="empty"),
        pytest.param(b'["command"]', "bad_request", id="array"),
        pytest.param(b'"speak"', "bad_request", id="string"),
        pytest.param(b'{"command":{},"speak":"hi"}', "bad_request", id="both"),
        pytest.param(b'{"voice":{}}', "bad_request", id="neither"),
        pytest.param(b'{"command":[1,2]}', "bad_request", id="command-array"),
        pytest.param(b'{"command":"reboot"}', "bad_request", id="command-string"),
        pytest.param(b'{"command":null}', "bad_request", id="command-null"),
        pytest.param(b'{"speak":""}', "bad_request", id="speak-empty"),
        pytest.param(b'{"speak":"  \\n "}', "bad_request", id="speak-blank"),
        pytest.param(b'{"speak":42}', "bad_request", id="speak-number"),
        pytest.param(b'{"speak":"hi","voice":"fast"}', "bad_request", id="voice-string"),
        pytest.param(b'{"speak":"hi","voice":[1]}', "bad_request", id="voice-array"),
        pytest.param(
            orjson.dumps({"speak": "a" * (MAX_SPEAK_CHARS + 1)}), "bad_request", id="speak-long"
        ),
    ],
)
async def test_bad_push_is_400_and_nothing_reaches_the_device(
    make_relay: RelayFactory, body: bytes, error_type: str
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    status, answer = await push(client, MAC, body)
    assert status == 400, answer
    assert answer["errorType"] == error_type
    assert answer["error"]
    assert "command" in answer["hint"]
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # nothing was queued before the pong


ALLOWED_TYPES_HINT = ("llm", "alert", "system", "notify")


@pytest.mark.parametrize(
    ("device", "field", "hint"),
    [
        pytest.param(b'{"type":"hello"}', "device.type", ALLOWED_TYPES_HINT, id="hello"),
        pytest.param(b'{"type":"tts","state":"stop"}', "device.type", ALLOWED_TYPES_HINT, id="tts"),
        pytest.param(b'{"type":"mcp","payload":{}}', "device.type", ALLOWED_TYPES_HINT, id="mcp"),
        pytest.param(b'{"type":"custom"}', "device.type", ALLOWED_TYPES_HINT, id="custom"),
        pytest.param(b'{"emotion":"happy"}', "device.type", ALLOWED_TYPES_HINT, id="no-type"),
        pytest.param(b'{"type":null}', "device.type", ALLOWED_TYPES_HINT, id="type-null"),
        pytest.param(b'{"type":["llm"]}', "device.type", ALLOWED_TYPES_HINT, id="type-array"),
        pytest.param(b'{"type":"LLM","emotion":"x"}', "device.type", ALLOWED_TYPES_HINT, id="case"),
        pytest.param(b'"reboot"', "device", ALLOWED_TYPES_HINT, id="string"),
        pytest.param(b"[]", "device", ALLOWED_TYPES_HINT, id="array"),
        pytest.param(b"null", "device", ALLOWED_TYPES_HINT, id="null"),
        pytest.param(b'{"type":"llm"}', "device.emotion", ('"emotion":"happy"',), id="llm-bare"),
        pytest.param(
            b'{"type":"llm","emotion":7}', "device.emotion", ('"emotion":',), id="llm-number"
        ),
        pytest.param(
            b'{"type":"llm","emotion":" "}', "device.emotion", ('"emotion":',), id="llm-blank"
        ),
        pytest.param(
            b'{"type":"alert","status":"Reminder","message":"Walk"}',
            "device.emotion",
            ('"type":"alert"', '"emotion":'),
            id="alert-no-emotion",
        ),
        pytest.param(
            b'{"type":"alert","message":"Walk","emotion":"happy"}',
            "device.status",
            ('"type":"alert"', '"status":'),
            id="alert-no-status",
        ),
        pytest.param(
            b'{"type":"alert","status":"Reminder","message":{},"emotion":"happy"}',
            "device.message",
            ('"type":"alert"', '"message":'),
            id="alert-message-object",
        ),
        pytest.param(b'{"type":"system"}', "device.command", ('"command":"reboot"',), id="system"),
        pytest.param(
            b'{"type":"system","command":true}', "device.command", ('"reboot"',), id="system-bool"
        ),
        pytest.param(
            b'{"type":"notify"}', "device.event", ('"event":"config_updated"',), id="notify-bare"
        ),
        pytest.param(
            b'{"type":"notify","event":"volume_changed"}',
            "device.event",
            ('"event":"config_updated"',),
            id="notify-other-event",
        ),
    ],
)
async def test_bad_device_push_is_400_naming_the_field(
    make_relay: RelayFactory, device: bytes, field: str, hint: tuple[str, ...]
) -> None:
    client = await make_relay()
    dev = await Device.connect(client, hello=NOTIFY_HELLO)
    status, answer = await push(client, MAC, b'{"device":' + device + b"}")
    assert status == 400, answer
    assert answer["errorType"] == "bad_request"
    assert answer["error"].startswith(field + " "), answer
    for word in hint:
        assert word in answer["hint"], answer
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # nothing was queued before the pong


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"device":{"type":"llm","emotion":"x"},"speak":"hi"}', id="device-speak"),
        pytest.param(b'{"device":{"type":"llm","emotion":"x"},"command":{}}', id="device-command"),
    ],
)
async def test_device_with_another_form_is_400(make_relay: RelayFactory, body: bytes) -> None:
    client = await make_relay()
    await Device.connect(client)
    status, answer = await push(client, MAC, body)
    assert (status, answer["errorType"]) == (400, "bad_request")
    assert answer["error"] == "give exactly one of command, speak or device"
    assert '{"device":{"type":"llm"' in answer["hint"]


async def test_push_body_over_64_kib_is_413(make_relay: RelayFactory) -> None:
    client = await make_relay()
    await Device.connect(client)
    head, tail = b'{"command":{"pad":"', b'"}}'
    at_limit = head + b"x" * (MAX_PUSH_BODY - len(head) - len(tail)) + tail
    assert len(at_limit) == MAX_PUSH_BODY
    status, answer = await push(client, MAC, at_limit)
    assert (status, answer["delivered"]) == (200, True)
    status, answer = await push(client, MAC, at_limit[:-3] + b'x"}}')
    assert status == 413
    assert answer["errorType"] == "too_large"


async def test_api_token_is_required_when_configured(make_relay: RelayFactory) -> None:
    client = await make_relay(api={"tokens": ["k"]})
    dev = await Device.connect(client)
    body = b'{"command":{"event":"message"}}'
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k"}):
        status, answer = await push(client, MAC, body, headers)
        assert status == 401, headers
        assert answer["errorType"] == "unauthorized"
        assert answer["hint"]
        for path in (DEVICES, f"{DEVICES}/{MAC}"):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401
    status, answer = await push(client, MAC, body, {"Authorization": "Bearer k"})
    assert (status, answer["delivered"]) == (200, True)
    assert '"business_response":{"event":"message"}' in await recv_raw(dev)
    resp = await client.get(DEVICES, headers={"Authorization": "bearer k"})
    assert resp.status == 200


async def test_list_devices_pages_chain_to_every_device(make_relay: RelayFactory) -> None:
    client = await make_relay()
    ids = [f"dev-{i}" for i in (3, 0, 4, 1, 2)]
    for device_id in ids:
        await Device.connect(client, device_id=device_id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await client.get(DEVICES, params=params)
        assert resp.status == 200
        page = await resp.json()
        assert 1 <= len(page["devices"]) <= 2
        seen += [d["device_id"] for d in page["devices"]]
        assert all(d["node"] == node_of(client) for d in page["devices"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 5, "the cursor does not advance"
    assert pages == 3
    assert seen == sorted(ids)
    resp = await client.get(DEVICES)
    everything = await resp.json()
    assert [d["device_id"] for d in everything["devices"]] == sorted(ids)
    assert everything["next_cursor"] is None


async def test_get_device_shows_its_presence(make_relay: RelayFactory) -> None:
    client = await make_relay()
    before = time.time()
    dev = await Device.connect(client)
    await dev.send({"type": "ping"})
    await dev.recv()
    resp = await client.get(f"{DEVICES}/{CANONICAL}")
    assert resp.status == 200
    p = await resp.json()
    assert p["device_id"] == CANONICAL
    assert p["node"] == node_of(client)
    assert p["session_id"] == dev.hello["session_id"]
    assert before - 1 <= p["connected_at"] <= time.time() + 1
    assert p["connected_at"] <= p["last_seen"] <= time.time() + 1

    await dev.ws.close()
    for _ in range(50):  # bounded: the relay unregisters once its reader sees the close
        resp = await client.get(f"{DEVICES}/{CANONICAL}")
        if resp.status == 404:
            break
        await asyncio.sleep(0.02)
    assert resp.status == 404
    body = await resp.json()
    assert body["errorType"] == "offline"


async def test_get_unknown_device_is_404(make_relay: RelayFactory) -> None:
    client = await make_relay()
    resp = await client.get(f"{DEVICES}/{MAC}")
    assert resp.status == 404
    assert set(await resp.json()) == {"error", "errorType", "hint"}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", ""])
async def test_list_limit_out_of_range_is_400(make_relay: RelayFactory, limit: str) -> None:
    client = await make_relay()
    resp = await client.get(DEVICES, params={"limit": limit})
    assert resp.status == 400
    assert (await resp.json())["errorType"] == "bad_request"


async def test_list_limit_bounds_are_accepted(make_relay: RelayFactory) -> None:
    client = await make_relay()
    await Device.connect(client)
    for limit in ("1", "1000"):
        resp = await client.get(DEVICES, params={"limit": limit})
        assert resp.status == 200
        assert [d["device_id"] for d in (await resp.json())["devices"]] == [CANONICAL]


async def test_push_results_are_counted(make_relay: RelayFactory) -> None:
    client = await make_relay()
    await Device.connect(client)
    body = b'{"command":{"event":"message"}}'
    for device_id in (MAC, MAC, "ghost", MAC):
        await push(client, device_id, body)
    await push(client, MAC, b'{"device":{"type":"llm","emotion":"happy"}}')
    await push(client, MAC, b'{"device":{"type":"notify","event":"config_updated"}}')
    await push(client, MAC, b"{}")  # a bad request is not a push result
    await push(client, MAC, b'{"device":{"type":"hello"}}')
    samples = await scrape(client)
    assert value(samples, "relay_push_total", result="delivered") == 4
    assert value(samples, "relay_push_total", result="offline") == 1
    assert value(samples, "relay_push_total", result="not_supported") == 1
    # Sent device messages are counted by their type, like every message to a device.
    assert value(samples, "relay_messages_total", type="llm", direction="out") == 1
    results = {dict(labels)["result"] for name, labels in samples if name == "relay_push_total"}
    assert results == {"delivered", "offline", "not_supported"}
