"""Device text messages (docs/protocol.md §1.2, §1.3, §1.5): JSON text in, typed messages out."""

from __future__ import annotations

import json

import orjson
import pytest

from protocol import device, jsonutil
from protocol.audio_format import AudioFormat
from protocol.device import (
    EMOJI,
    Abort,
    Custom,
    DetectRules,
    DeviceMessage,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Mcp,
    Ping,
    decode,
    error,
    hello_reply,
    phrase_key,
    pong,
    sentence_start,
    stt,
    tts_start,
    tts_stop,
)
from protocol.errors import MESSAGES, DeviceError, ProtocolError

BIG = 123456789012345678901234567890


def rejected(data: str | bytes) -> ProtocolError:
    """Decode `data`, expecting a protocol error; return it."""
    with pytest.raises(ProtocolError) as info:
        decode(data)
    return info.value


def outcome(data: str | bytes) -> DeviceMessage | DeviceError:
    """The decoded message, or the code of the error the device is told."""
    try:
        return decode(data)
    except ProtocolError as exc:
        return exc.code


def assert_rejected(data: str | bytes, code: DeviceError, detail: str = "") -> None:
    """`data` is answered with `code`; `detail` (for logs) names the offending field."""
    exc = rejected(data)
    assert (exc.code, exc.detail) == (code, detail)


# ---- hello (§1.2) -----------------------------------------------------------------------

FIRMWARE_HELLO = (
    '{"type":"hello","version":1,"transport":"websocket",'
    '"features":{"mcp":true,"aec":true,"notify":{"config_updated":true}},'
    '"audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60,'
    '"play_buffer_duration":1000},'
    '"agent_params":{"custom_replace_prompt":{"user_name":"小明"}}}'
)


def test_hello_from_firmware() -> None:
    assert decode(FIRMWARE_HELLO) == Hello(
        version=1,
        transport="websocket",
        audio_params=AudioFormat("opus", 16000, 1, 60),
        play_buffer_ms=1000,
        notify_config_updated=True,
        mcp=True,
        device_id=None,
        token=None,
    )


def test_hello_as_bytes() -> None:
    assert decode(FIRMWARE_HELLO.encode()) == decode(FIRMWARE_HELLO)


def test_minimal_hello_takes_firmware_defaults() -> None:
    assert decode('{"type":"hello"}') == Hello(
        version=1,
        transport="websocket",
        audio_params=AudioFormat("opus", 16000, 1, 60),
        play_buffer_ms=1000,
        notify_config_updated=False,
    )


def test_hello_without_transport_and_audio_params() -> None:
    hello = decode('{"type":"hello","version":3,"features":{"mcp":true}}')
    assert hello == Hello(version=3, audio_params=AudioFormat(), mcp=True)


def test_hello_pcm_variant() -> None:
    hello = decode(
        '{"type":"hello","version":1,"transport":"websocket","audio_params":'
        '{"format":"pcm","sample_rate":16000,"channels":1,"bit_depth":16,'
        '"endianness":"little","frame_duration":20,"frame_size":320,'
        '"sample_format":"signed_int16","play_buffer_duration":1000}}'
    )
    assert hello == Hello(audio_params=AudioFormat("pcm", 16000, 1, 20), play_buffer_ms=1000)


def test_hello_pcm_default_frame_is_20ms() -> None:
    hello = decode('{"type":"hello","audio_params":{"format":"pcm"}}')
    assert hello == Hello(audio_params=AudioFormat("pcm", 16000, 1, 20), play_buffer_ms=1000)


def test_hello_opus_defaults_for_absent_audio_fields() -> None:
    hello = decode('{"type":"hello","audio_params":{"sample_rate":24000}}')
    assert hello == Hello(audio_params=AudioFormat("opus", 24000, 1, 60), play_buffer_ms=1000)


def test_hello_audio_params_bounds_included() -> None:
    low = decode(
        '{"type":"hello","audio_params":{"sample_rate":8000,"channels":1,'
        '"frame_duration":10,"play_buffer_duration":0}}'
    )
    high = decode(
        '{"type":"hello","audio_params":{"sample_rate":48000,"channels":2,'
        '"frame_duration":120,"play_buffer_duration":10000}}'
    )
    assert low == Hello(audio_params=AudioFormat("opus", 8000, 1, 10), play_buffer_ms=0)
    assert high == Hello(audio_params=AudioFormat("opus", 48000, 2, 120), play_buffer_ms=10000)


def test_hello_non_object_audio_params_ignored() -> None:
    assert decode('{"type":"hello","audio_params":"opus"}') == Hello()


def test_hello_identity_from_browser_client() -> None:
    hello = decode(
        '{"type":"hello","device_id":"66:9C:4B:DA:13:EA","device_name":"web","token":"t0k"}'
    )
    assert hello == Hello(device_id="66:9C:4B:DA:13:EA", token="t0k")


@pytest.mark.parametrize(
    ("features", "notify"),
    [
        ('{"notify":{"config_updated":true}}', True),
        ('{"notify":{"config_updated":false}}', False),
        ('{"notify":{"config_updated":"true"}}', False),
        ('{"notify":{"config_updated":1}}', False),
        ('{"notify":{}}', False),
        ('{"notify":true}', False),
        ('{"mcp":true}', False),
        ('["notify"]', False),
        ("null", False),
    ],
)
def test_hello_notify_config_updated(features: str, notify: bool) -> None:
    hello = decode(f'{{"type":"hello","features":{features}}}')
    assert isinstance(hello, Hello)
    assert hello.notify_config_updated is notify


@pytest.mark.parametrize(
    ("features", "mcp"),
    [('{"mcp":true}', True), ('{"mcp":1}', False), ('{"mcp":"true"}', False), ("[]", False)],
)
def test_hello_features_mcp(features: str, mcp: bool) -> None:
    # docs/protocol.md §3.1: only a literal true starts the MCP set-up.
    assert decode(f'{{"type":"hello","features":{features}}}') == Hello(mcp=mcp)


@pytest.mark.parametrize(("version", "expected"), [("2", 2), ("3", 3), ('"2"', 1), ("true", 1)])
def test_hello_version(version: str, expected: int) -> None:
    assert decode(f'{{"type":"hello","version":{version}}}') == Hello(version=expected)


def test_hello_empty_transport_is_websocket() -> None:
    assert decode('{"type":"hello","transport":""}') == Hello(transport="websocket")


@pytest.mark.parametrize("key", ["transport", "device_id", "token"])
@pytest.mark.parametrize("value", ["1", "true", "[]", '{"a":"b"}'])
def test_hello_non_string_optional_string(key: str, value: str) -> None:
    assert_rejected(f'{{"type":"hello","{key}":{value}}}', DeviceError.INVALID_FIELD, key)


@pytest.mark.parametrize("key", ["transport", "device_id", "token"])
def test_hello_null_optional_string_is_absent(key: str) -> None:
    assert decode(f'{{"type":"hello","{key}":null}}') == Hello()


@pytest.mark.parametrize("fmt", ['"mp3"', '"OPUS"', '""', "null", "1", '["opus"]'])
def test_hello_invalid_audio_format(fmt: str) -> None:
    data = f'{{"type":"hello","audio_params":{{"format":{fmt}}}}}'
    assert_rejected(data, DeviceError.INVALID_FIELD, "audio_params.format")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sample_rate", "7999"),
        ("sample_rate", "48001"),
        ("sample_rate", '"16000"'),
        ("sample_rate", "16000.0"),
        ("sample_rate", "null"),
        ("channels", "0"),
        ("channels", "3"),
        ("channels", "true"),
        ("frame_duration", "9"),
        ("frame_duration", "121"),
        ("frame_duration", "[60]"),
        ("play_buffer_duration", "-1"),
        ("play_buffer_duration", "10001"),
        ("play_buffer_duration", str(BIG)),
    ],
)
def test_hello_invalid_audio_value(key: str, value: str) -> None:
    data = f'{{"type":"hello","audio_params":{{"format":"opus","{key}":{value}}}}}'
    assert_rejected(data, DeviceError.INVALID_FIELD, f"audio_params.{key}")


# ---- listen / abort / ping (§1.3) -------------------------------------------------------


@pytest.mark.parametrize("mode", ["manual", "auto", "realtime"])
def test_listen_start(mode: str) -> None:
    data = f'{{"session_id":"S","type":"listen","state":"start","mode":"{mode}"}}'
    assert decode(data) == Listen(state="start", mode=mode)  # type: ignore[arg-type]


def test_listen_start_without_mode() -> None:
    assert decode('{"type":"listen","state":"start"}') == Listen(state="start")


def test_listen_stop() -> None:
    assert decode('{"session_id":"S","type":"listen","state":"stop"}') == Listen(state="stop")


def test_listen_detect() -> None:
    data = '{"session_id":"S","type":"listen","state":"detect","text":"你好小智"}'
    assert decode(data) == Listen(state="detect", text="你好小智")


def test_listen_detect_with_text_response() -> None:
    data = '{"type":"listen","state":"detect","text":"hi","text_response":"hello there"}'
    assert decode(data) == Listen(state="detect", text="hi", text_response="hello there")


@pytest.mark.parametrize("data", ['{"type":"listen"}', '{"type":"listen","state":null}'])
def test_listen_missing_state(data: str) -> None:
    assert_rejected(data, DeviceError.MISSING_FIELD, "state")


@pytest.mark.parametrize("state", ['"pause"', '"START"', '""', "1", '["start"]', "{}"])
def test_listen_invalid_state(state: str) -> None:
    assert_rejected(f'{{"type":"listen","state":{state}}}', DeviceError.INVALID_FIELD, "state")


@pytest.mark.parametrize("mode", ['"push"', '"Auto"', '""', "0", "[]"])
def test_listen_invalid_mode(mode: str) -> None:
    data = f'{{"type":"listen","state":"start","mode":{mode}}}'
    assert_rejected(data, DeviceError.INVALID_FIELD, "mode")


@pytest.mark.parametrize("key", ["text", "text_response"])
def test_listen_non_string_text(key: str) -> None:
    data = f'{{"type":"listen","state":"detect","{key}":1}}'
    assert_rejected(data, DeviceError.INVALID_FIELD, key)


def test_abort() -> None:
    assert decode('{"session_id":"S","type":"abort"}') == Abort()


def test_abort_with_reason() -> None:
    data = '{"session_id":"S","type":"abort","reason":"wake_word_detected"}'
    assert decode(data) == Abort(reason="wake_word_detected")


def test_abort_non_string_reason() -> None:
    assert_rejected('{"type":"abort","reason":1}', DeviceError.INVALID_FIELD, "reason")


def test_ping() -> None:
    assert decode('{"type":"ping"}') == Ping()


# ---- custom / mcp -----------------------------------------------------------------------


def test_custom_payload_bytes_unchanged() -> None:
    payload = (
        '{"z":0,"auth":{"device_id":"669C4BDA13EA"},"type":"report",'
        '"details":{"session_id":"S","名字":"小智 🙂","list":[1.5,true,null,-2],"e":{}}}'
    )
    message = decode(f'{{"session_id":"S","type":"custom","payload":{payload}}}')
    assert message == Custom(
        payload=payload.encode(), request_type="report", payload_session_id="S"
    )


def test_custom_payload_source_text_forwarded() -> None:
    # §2.1: forwarded unchanged; spacing and escapes of the payload are kept as sent.
    payload = '{ "b" : "\\u00e9\\"}" , "a" : [ 1 ,2.50 ,\n{}] }'
    message = decode(f'{{"type":"custom", "payload" :  {payload}\t, "session_id":"S"}}')
    assert message == Custom(payload.encode(), "custom", None)


def test_custom_payload_big_integer_unchanged() -> None:
    payload = f'{{"type":"report","details":{{"session_id":"S","名字":"小智","n":{BIG}}},"z":1}}'
    message = decode(f'{{"type":"custom","payload":{payload}}}')
    assert message == Custom(
        payload=payload.encode(), request_type="report", payload_session_id="S"
    )


def test_custom_payload_huge_integer_unchanged() -> None:
    payload = f'{{"type":"get","n":{"9" * 400},"名":"小智"}}'
    message = decode(f'{{"type":"custom","payload":{payload}}}')
    assert message == Custom(payload=payload.encode(), request_type="get", payload_session_id=None)


def test_custom_payload_out_of_range_float_unchanged() -> None:
    assert decode('{"type":"custom","payload":{"v":1e400}}') == Custom(
        b'{"v":1e400}', "custom", None
    )


def test_custom_from_utf8_bytes() -> None:
    data = '{"type":"custom","payload":{"type":"report","名":"小智 🙂"}}'.encode()
    assert decode(data) == Custom('{"type":"report","名":"小智 🙂"}'.encode(), "report", None)


def test_custom_from_bytes_with_utf8_bom_is_bad_json() -> None:
    # RFC 8259 §8.1: a BOM may be refused; we refuse it rather than guess.
    data = b'\xef\xbb\xbf{"type":"custom","payload":{ "type" : "get" }}'
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code is DeviceError.BAD_JSON


def test_custom_duplicate_payload_last_wins_like_the_parser() -> None:
    data = '{"type":"custom","payload":{"type":"a"},"payload":{"type":"b"}}'
    assert decode(data) == Custom(b'{"type":"b"}', "b", None)


def test_custom_escaped_member_name() -> None:
    data = '{"type":"custom","\\u0070ayload":{"type":"reset"}}'
    assert decode(data) == Custom(b'{"type":"reset"}', "reset", None)


def test_custom_payload_lone_surrogate_never_crashes() -> None:
    assert outcome('{"type":"custom","payload":{"a":"\\ud800"}}') in (
        DeviceError.BAD_JSON,
        Custom(b'{"a":"\\ud800"}', "custom", None),
    )


def test_custom_from_utf16_bytes_is_protocol_error_not_crash() -> None:
    data = '{"type":"custom","payload":{"a":1}}'.encode("utf-16")
    assert outcome(data) in (DeviceError.BAD_JSON, Custom(b'{"a":1}', "custom", None))


@pytest.mark.parametrize(
    ("payload", "request_type", "session_id"),
    [
        ("{}", "custom", None),
        ('{"type":"reset"}', "reset", None),
        ('{"type":1,"details":{"session_id":"S"}}', "custom", "S"),
        ('{"type":"get","details":{"session_id":""}}', "get", None),
        ('{"type":"get","details":{"session_id":5}}', "get", None),
        ('{"type":"get","details":["session_id"]}', "get", None),
        ('{"type":"get","session_id":"S"}', "get", None),
    ],
)
def test_custom_request_type_and_session(
    payload: str, request_type: str, session_id: str | None
) -> None:
    message = decode(f'{{"type":"custom","payload":{payload}}}')
    assert message == Custom(payload.encode(), request_type, session_id)


def test_custom_without_payload() -> None:
    assert_rejected('{"type":"custom"}', DeviceError.MISSING_FIELD, "payload")


@pytest.mark.parametrize("payload", ["null", "[]", '"x"', "1", "true"])
def test_custom_non_object_payload(payload: str) -> None:
    data = f'{{"type":"custom","payload":{payload}}}'
    assert_rejected(data, DeviceError.INVALID_FIELD, "payload")


def test_mcp_payload_bytes() -> None:
    payload = '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"self.light","描述":"灯"}]}}'
    assert decode(f'{{"session_id":"S","type":"mcp","payload":{payload}}}') == Mcp(payload.encode())


@pytest.mark.parametrize("payload", ["null", "[1,2]", '"x"'])
def test_mcp_payload_is_opaque(payload: str) -> None:
    assert decode(f'{{"type":"mcp","payload":{payload}}}') == Mcp(payload.encode())


def test_mcp_payload_big_integer_unchanged() -> None:
    payload = f'{{"jsonrpc":"2.0","id":{BIG},"result":{{}}}}'
    assert decode(f'{{"type":"mcp","payload":{payload}}}') == Mcp(payload.encode())


def test_mcp_without_payload() -> None:
    assert_rejected('{"type":"mcp"}', DeviceError.MISSING_FIELD, "payload")


# ---- envelope errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", ["", "{", "hello", b"\xff\xfe", "{'type':'ping'}", '{"type":"ping"}x']
)
def test_bad_json(data: str | bytes) -> None:
    exc = rejected(data)
    assert (exc.code, exc.detail) == (DeviceError.BAD_JSON, "")
    assert isinstance(exc.__cause__, ValueError)


@pytest.mark.parametrize("data", ["[]", '[{"type":"ping"}]', '"ping"', "1", "null", "true"])
def test_non_object(data: str) -> None:
    exc = rejected(data)
    assert (exc.code, exc.detail, exc.__cause__) == (DeviceError.BAD_JSON, "", None)


@pytest.mark.parametrize("data", ["{}", '{"type":null}', '{"session_id":"S","state":"start"}'])
def test_missing_type(data: str) -> None:
    assert_rejected(data, DeviceError.MISSING_FIELD, "type")


@pytest.mark.parametrize(
    ("mtype", "detail"),
    [
        ('"bye"', "bye"),
        ('"Hello"', "Hello"),
        ('""', ""),
        ('"stt"', "stt"),
        ('"' + "x" * 40 + '"', "x" * 32),
        ("1", "1"),
        ("true", "True"),
        ('["hello"]', "['hello']"),
        ('{"a":1}', "{'a': 1}"),
    ],
)
def test_unknown_type(mtype: str, detail: str) -> None:
    assert_rejected(f'{{"type":{mtype}}}', DeviceError.UNKNOWN_TYPE, detail)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literal_is_bad_json(literal: str) -> None:
    assert_rejected(f'{{"type":"custom","payload":{{"v":{literal}}}}}', DeviceError.BAD_JSON)


def test_deep_unclosed_nesting_is_too_deep() -> None:
    assert_rejected("[" * 100_000, DeviceError.TOO_DEEP)


@pytest.mark.parametrize("mtype", ["custom", "mcp", "iot", "listen"])
@pytest.mark.parametrize("depth", [jsonutil.MAX_DEPTH, 1000])
def test_deep_nesting_is_too_deep(mtype: str, depth: int) -> None:
    # 1000 levels pass orjson; the payload's source text was then re-scanned by the
    # stdlib's recursive scanner, which overflowed (RecursionError) and dropped the device.
    deep = "[" * depth + "]" * depth
    exc = rejected(f'{{"type":"{mtype}","payload":{deep},"descriptors":{deep}}}')
    assert (exc.code, exc.detail) == (DeviceError.TOO_DEEP, "")
    assert "64 levels" in MESSAGES[exc.code]


@pytest.mark.parametrize("mtype", ["custom", "mcp"])
def test_payload_nested_to_the_limit_passes(mtype: str) -> None:
    deep = "[" * (jsonutil.MAX_DEPTH - 1) + "]" * (jsonutil.MAX_DEPTH - 1)
    payload = f'{{"type":"x","details":{{"d":{deep[2:-2]}}}}}'
    msg = decode(f'{{"type":"{mtype}","payload":{payload}}}')
    assert isinstance(msg, Custom | Mcp)
    assert msg.payload == payload.encode()


# ---- relay → device (§1.2, §1.5) --------------------------------------------------------


def test_hello_reply_bytes() -> None:
    assert hello_reply("sid-1", AudioFormat("opus", 24000, 1, 60), 500) == (
        b'{"type":"hello","transport":"websocket","session_id":"sid-1",'
        b'"audio_params":{"format":"opus","sample_rate":24000,"channels":1,'
        b'"frame_duration":60,"play_buffer_duration":500}}'
    )


def test_hello_reply_pcm() -> None:
    assert orjson.loads(hello_reply("S", AudioFormat("pcm", 16000, 2, 20), 0)) == {
        "type": "hello",
        "transport": "websocket",
        "session_id": "S",
        "audio_params": {
            "format": "pcm",
            "sample_rate": 16000,
            "channels": 2,
            "frame_duration": 20,
            "play_buffer_duration": 0,
        },
    }


def test_stt_bytes() -> None:
    assert (
        stt("S", "你好\n")
        == b'{"session_id":"S","type":"stt","text":"\xe4\xbd\xa0\xe5\xa5\xbd\\n"}'
    )


def test_tts_start_bytes() -> None:
    assert tts_start("S") == b'{"session_id":"S","type":"tts","state":"start"}'


def test_sentence_start_bytes() -> None:
    assert sentence_start("S", 'a "b"') == (
        b'{"session_id":"S","type":"tts","state":"sentence_start","text":"a \\"b\\""}'
    )


def test_tts_stop_bytes() -> None:
    assert tts_stop("S", aborted=False) == (
        b'{"session_id":"S","type":"tts","state":"stop","is_aborted":false}'
    )
    assert tts_stop("S", aborted=True) == (
        b'{"session_id":"S","type":"tts","state":"stop","is_aborted":true}'
    )


def test_error_with_session_id() -> None:
    assert error("S", DeviceError.UNKNOWN_TYPE) == (
        b'{"session_id":"S","type":"error","code":"unknown_type","message":"unknown message type"}'
    )


def test_error_without_session_id() -> None:
    assert error(None, DeviceError.BAD_JSON) == (
        b'{"type":"error","code":"bad_json","message":"text frame is not a JSON object"}'
    )


@pytest.mark.parametrize("code", list(DeviceError))
def test_error_every_code(code: DeviceError) -> None:
    assert json.loads(error("S", code)) == {
        "session_id": "S",
        "type": "error",
        "code": code.value,
        "message": MESSAGES[code],
    }


def test_pong_bytes() -> None:
    assert pong() == b'{"type":"pong"}'


# ---- goodbye, iot, detect rules (docs/protocol.md §1.3) -----------------------------------


def test_goodbye() -> None:
    assert decode('{"session_id":"S","type":"goodbye"}') == Goodbye()
    assert decode('{"type":"goodbye"}') == Goodbye()


def test_iot_lists_are_kept_as_their_source_text() -> None:
    data = (
        '{"session_id":"S","type":"iot","descriptors":[{"name":"Lamp","v":123456789012345678901}]}'
    )
    assert decode(data) == Iot(descriptors=b'[{"name":"Lamp","v":123456789012345678901}]')
    assert decode('{"type":"iot","states":[{"name":"Lamp","state":{"power":true}}]}') == Iot(
        states=b'[{"name":"Lamp","state":{"power":true}}]'
    )


@pytest.mark.parametrize(
    "data",
    [
        '{"type":"iot"}',
        '{"type":"iot","descriptors":5}',
        '{"type":"iot","states":"junk","descriptors":null}',
        '{"type":"iot","update":true,"states":{"a":[1,2]}}',
    ],
)
def test_iot_with_junk_is_accepted(data: str) -> None:
    assert isinstance(decode(data), Iot)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Hi, ESP!", "hiesp"),
        ("  你好，小智。 ", "你好小智"),
        ("HEY\tXiaozhi", "heyxiaozhi"),
        ("", ""),
        ("   ", ""),
        ("¿?!", ""),
        ("turn on the light", "turnonthelight"),
    ],
)
def test_phrase_key(text: str, key: str) -> None:
    assert phrase_key(text) == key


def test_detect_rules_tell_wake_words_from_typed_text() -> None:
    rules = DetectRules()
    for word in (
        "你好小智",
        "你好，小智！",
        "hi esp",
        "Hi,ESP",
        "",
        "  ",
        "。",
        "嗨乐鑫",
        "嗨，乐鑫",
    ):
        assert rules.is_wake_word(word), word
    for text in ("你好", "what time is it", "小智你好", "hi"):
        assert not rules.is_wake_word(text), text
    own = DetectRules.of(("Hey Robot",), wake_word_chat=True, max_text_chars=10)
    assert own.is_wake_word("hey, robot")
    assert not own.is_wake_word("你好小智")
    assert (own.wake_word_chat, own.max_text_chars) == (True, 10)


def test_llm_message_names_the_emotion_and_its_emoji() -> None:
    assert orjson.loads(device.llm("S", "happy")) == {
        "session_id": "S",
        "type": "llm",
        "text": "🙂",
        "emotion": "happy",
    }
    unknown = orjson.loads(device.llm("S", "grumpy"))
    assert (unknown["emotion"], unknown["text"]) == ("grumpy", EMOJI["neutral"])
