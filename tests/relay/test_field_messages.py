"""Messages real clients send that the relay once refused or ignored (docs/protocol.md §1.3):
typed text in `listen detect`, configured wake words, `goodbye`, pre-MCP `iot`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType

from protocol.errors import CloseCode
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, is_tts_stop
from tests.relay.voice_helpers import chat_msgs, metric, wait_metric


async def detect(dev: Device, text: Any) -> None:
    await dev.send(
        {"session_id": dev.session_id, "type": "listen", "state": "detect", "text": text}
    )


# ---- typed text --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["what time is it", "  现在几点了？ ", "hi"])
async def test_typed_text_is_echoed_and_answered(
    make_relay: RelayFactory, fake: FakeBusiness, text: str
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await detect(dev, text)
    got = await dev.recv_until(is_tts_stop)
    assert got[0] == {"session_id": dev.session_id, "type": "stt", "text": text.strip()}
    states = [m.get("state") for m in got if m.get("type") == "tts"]
    assert states[0] == "start"
    assert "sentence_start" in states
    assert got[-1]["is_aborted"] is False
    assert dev.audio, "the answer was not spoken"
    assert chat_msgs(fake.bodies) == [text.strip()]
    assert await metric(client, "relay_wake_words_total") == 0


async def test_typed_text_without_a_session_id_is_answered(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    # docs/protocol.md §1.2: a message without session_id belongs to the connection.
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send({"type": "listen", "state": "detect", "text": "dance"})
    await dev.recv_until(is_tts_stop)
    assert chat_msgs(fake.bodies) == ["dance"]


async def test_an_empty_session_id_is_the_connection_s(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    # py-xiaozhi never keeps the relay's session id: every message it sends carries "" (§1.2),
    # written by json.dumps with its default separators.
    client = await make_relay()
    dev = await Device.connect(client)
    typed = '{"session_id": "", "type": "listen", "state": "detect", "text": "dance"}'
    await dev.ws.send_str(typed)
    got = await dev.recv_until(lambda m: m.get("type") == "tts" and m.get("state") == "start")
    assert got[0] == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    await dev.ws.send_str('{"session_id": "", "type": "abort"}')
    stop = (await dev.recv_until(is_tts_stop))[-1]
    assert stop["is_aborted"] is True
    assert chat_msgs(fake.bodies) == ["dance"]


async def test_text_over_the_limit_is_refused_and_nothing_is_asked(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await detect(dev, "讲" * 10_000)  # 30 KB of UTF-8, within one WebSocket message
    assert await dev.recv() == {
        "session_id": dev.session_id,
        "type": "error",
        "code": "text_too_long",
        "message": "the text is longer than this relay accepts",
    }
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # the connection stays
    assert fake.bodies == []


async def test_the_text_limit_is_configured(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay(listen={"max_text_chars": 5})
    dev = await Device.connect(client)
    await detect(dev, "dances")
    assert (await dev.recv())["code"] == "text_too_long"
    await detect(dev, " dance ")  # five characters once trimmed
    await dev.recv_until(is_tts_stop)
    assert chat_msgs(fake.bodies) == ["dance"]


async def test_a_non_string_text_is_an_invalid_field(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await detect(dev, ["not", "text"])
    reply = await dev.recv()
    assert (reply["type"], reply["code"]) == ("error", "invalid_field")
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # the connection stays
    assert fake.bodies == []


async def test_configured_wake_words_replace_the_stock_ones(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(listen={"wake_words": ["Hey Robot"]})
    dev = await Device.connect(client)
    await detect(dev, "hey, robot!")
    await wait_metric(client, "relay_wake_words_total", 1)
    await detect(dev, "你好小智")  # not a wake word on this relay: typed text
    await dev.recv_until(is_tts_stop)
    assert chat_msgs(fake.bodies) == ["你好小智"]


async def test_the_firmware_s_wake_model_labels_ask_nothing(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    # The firmware names the wake word by its ESP-SR model's label, verbatim, in a message it
    # builds by concatenation (Protocol::SendWakeWordDetected), then starts listening. These
    # labels were once taken for typed text and sent to the business as a chat.
    labels = [
        "嗨，乐鑫",  # wn9_hilexin, Espressif's own free wake word
        "嗨乐鑫",  # wn9s_hilexin
        "小滨小滨,小冰小冰",  # one model, one label for both words
        "Ni3Hao3Xiao3Zhi4",  # wn9l_nihaoxiaozhi_tts3
        "Xiaoaitongxue",
        "Hi,Wall,E or Hi,瓦力",
        "Hey,Willow",
        "小土豆",  # the default MultiNet custom wake word
    ]
    client = await make_relay()
    dev = await Device.connect(client)
    sid = dev.session_id
    for label in labels:
        await dev.ws.send_str(
            '{"session_id":"' + sid + '","type":"listen","state":"detect","text":"' + label + '"}'
        )
        await dev.ws.send_str(
            '{"session_id":"' + sid + '","type":"listen","state":"start","mode":"auto"}'
        )
        await dev.send({"type": "ping"})
        assert await dev.recv() == {"type": "pong"}, label  # no stt, no answer
    assert await metric(client, "relay_wake_words_total") == len(labels)
    assert fake.bodies == []


async def test_wake_word_chat_sends_the_wake_word_as_a_chat(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay(listen={"wake_word_chat": True})
    dev = await Device.connect(client)
    await detect(dev, "你好小智")
    got = await dev.recv_until(is_tts_stop)
    assert got[0]["type"] == "stt"
    assert got[0]["text"] == "你好小智"
    assert chat_msgs(fake.bodies) == ["你好小智"]
    assert await metric(client, "relay_wake_words_total") == 1


# ---- goodbye -----------------------------------------------------------------------------


async def test_goodbye_closes_normally(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send({"session_id": dev.session_id, "type": "goodbye"})
    msg = await dev.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == CloseCode.NORMAL
    assert await metric(client, 'relay_connections_closed_total{code="1000"}') == 1
    assert await metric(client, 'relay_messages_total{direction="out",type="error"}') == 0


async def test_goodbye_twice_closes_once_without_error(make_relay: RelayFactory) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    bye = orjson.dumps({"session_id": dev.session_id, "type": "goodbye"}).decode()
    await dev.ws.send_str(bye)
    await dev.ws.send_str(bye)
    msg = await dev.ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert dev.ws.close_code == CloseCode.NORMAL
    assert await metric(client, 'relay_connections_closed_total{code="1000"}') == 1
    assert await metric(client, 'relay_messages_total{direction="out",type="error"}') == 0


# ---- iot (pre-MCP firmware) --------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "iot", "descriptors": [{"name": "Speaker", "methods": {"SetVolume": {}}}]},
        {"type": "iot", "update": True, "states": [{"name": "Speaker", "state": {"volume": 50}}]},
        {"type": "iot", "descriptors": "junk", "states": 7},
        {"type": "iot"},
    ],
)
async def test_iot_is_accepted_and_counted(make_relay: RelayFactory, msg: dict[str, Any]) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await dev.send({"session_id": dev.session_id, **msg})
    await dev.send({"type": "ping"})
    assert await dev.recv() == {"type": "pong"}  # no error came before the pong
    assert await metric(client, 'relay_messages_total{direction="in",type="iot"}') == 1
