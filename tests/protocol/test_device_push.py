"""Device-native push messages (docs/protocol.md §1.5, §4): JSON in, the device's bytes out."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from protocol import jsonutil
from protocol.device_push import (
    EXAMPLES,
    PUSH_TYPES,
    TYPES_HINT,
    BadDevicePush,
    DevicePush,
    PushType,
    decode,
)

BIG = 123456789012345678901234567890


def refused(obj: Any) -> BadDevicePush:
    """Decode `obj` (serialised), expecting a refusal; return it."""
    with pytest.raises(BadDevicePush) as info:
        decode(orjson.dumps(obj).decode())
    return info.value


@pytest.mark.parametrize("mtype", PUSH_TYPES)
def test_every_example_is_accepted_as_it_is_documented(mtype: PushType) -> None:
    text = jsonutil.member_text(EXAMPLES[mtype], "device")
    assert text is not None
    msg = decode(text)
    assert msg.type == mtype
    assert msg.message("S") == b'{"session_id":"S",' + text[1:].encode()


def test_session_id_comes_first_and_replaces_the_callers() -> None:
    msg = decode('{"type":"llm","session_id":"forged","emotion":"happy","session_id":1}')
    assert msg == DevicePush("llm", b'"type":"llm","emotion":"happy"')
    assert msg.message('a"b') == b'{"session_id":"a\\"b","type":"llm","emotion":"happy"}'


def test_other_members_reach_the_device_as_written() -> None:
    text = (
        '{ "type" : "alert", "status":"s","message":"\\u00e9 小智","emotion":"sad",'
        f' "n" : {BIG}, "r": 1.50, "o": {{"k": [1, 2]}} }}'
    )
    raw = decode(text).message("S")
    expected = (
        '{"session_id":"S","type":"alert","status":"s","message":"\\u00e9 小智",'
        f'"emotion":"sad","n":{BIG},"r":1.50,"o":{{"k": [1, 2]}}}}'
    )
    assert raw == expected.encode()
    assert json.loads(raw)["message"] == "é 小智"


def test_a_repeated_name_is_sent_once_with_the_value_checked() -> None:
    # The firmware's cJSON reads the first of two equal names: it must see the checked one.
    raw = decode('{"type":"hello","emotion":"x","type":"llm"}').message("S")
    assert raw == b'{"session_id":"S","type":"llm","emotion":"x"}'


@pytest.mark.parametrize("obj", ["reboot", None, [], 1, True])
def test_not_an_object(obj: Any) -> None:
    err = refused(obj)
    assert err.error == "device must be a JSON object with a type"
    assert err.hint == TYPES_HINT
    assert str(err) == err.error


@pytest.mark.parametrize(
    "mtype", [None, "hello", "tts", "stt", "mcp", "custom", "error", "LLM", "", 1, ["llm"], {}]
)
def test_other_types_are_refused_with_the_allowed_ones(mtype: Any) -> None:
    obj = {"emotion": "happy"} if mtype is None else {"type": mtype, "emotion": "happy"}
    err = refused(obj)
    assert err.error == "device.type must be llm, alert, system or notify"
    for allowed in PUSH_TYPES:
        assert allowed in err.hint


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "llm"}, "emotion"),
        ({"type": "llm", "emotion": ""}, "emotion"),
        ({"type": "llm", "emotion": " \n"}, "emotion"),
        ({"type": "llm", "emotion": None}, "emotion"),
        ({"type": "alert", "message": "m", "emotion": "sad"}, "status"),
        ({"type": "alert", "status": "s", "emotion": "sad"}, "message"),
        ({"type": "alert", "status": "s", "message": "m"}, "emotion"),
        ({"type": "alert", "status": "s", "message": 3, "emotion": "sad"}, "message"),
        ({"type": "system"}, "command"),
        ({"type": "system", "command": ["reboot"]}, "command"),
        ({"type": "notify"}, "event"),
        ({"type": "notify", "event": False}, "event"),
    ],
)
def test_required_strings_are_named(obj: dict[str, Any], field: str) -> None:
    err = refused(obj)
    assert err.error == f"device.{field} (a non-empty string) is required for type {obj['type']}"
    assert err.hint == EXAMPLES[obj["type"]]


def test_notify_only_for_config_updated() -> None:
    err = refused({"type": "notify", "event": "volume_changed"})
    assert err.error == 'device.event must be "config_updated" for type notify'
    assert err.hint == EXAMPLES["notify"]
