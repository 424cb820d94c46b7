"""Business wire (docs/protocol.md §2): request bytes, event parsing, routing, device envelope."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from protocol.business import (
    BadEvent,
    BusinessEvent,
    Speak,
    ToolCall,
    chat_request,
    classify,
    envelope,
    error_event,
    header_value,
    is_end,
    mcp_notification_request,
    parse_event,
    relay_headers,
    session_ok,
    signature,
    tool_call,
    tool_result_request,
)
from protocol.errors import MESSAGES, BusinessError

BIG = 123456789012345678901234567890  # beyond 64 bits: orjson refuses it


def event(obj: dict[str, Any]) -> BusinessEvent:
    """Parse an event given as an object (serialised by the stdlib, big integers included)."""
    return parse_event(json.dumps(obj, ensure_ascii=False))


def chat(**details: Any) -> BusinessEvent:
    """A `message/chat` event with the given details."""
    return event({"event": "message", "type": "chat", "session_id": "S", "details": details})


# ---- request ----------------------------------------------------------------------------


def test_chat_request_bytes() -> None:
    body = chat_request("669C4BDA13EA", "你好", "S-1", 1640995200000)
    assert body == (
        b'{"auth":{"device_id":"669C4BDA13EA"},"type":"chat",'
        b'"details":{"msg":"\xe4\xbd\xa0\xe5\xa5\xbd","session_id":"S-1",'
        b'"timestamp":1640995200000}}'
    )


def test_chat_request_escapes_text() -> None:
    body = chat_request("D", 'say "hi"\n', "S", 0)
    assert body == (
        b'{"auth":{"device_id":"D"},"type":"chat",'
        b'"details":{"msg":"say \\"hi\\"\\n","session_id":"S","timestamp":0}}'
    )


# ---- parse_event ------------------------------------------------------------------------


def test_parse_event_object() -> None:
    data = '{"event":"message","type":"command","session_id":"S","details":{"actions":[]}}'
    assert parse_event(data) == BusinessEvent(
        raw=data.encode(),
        event="message",
        type="command",
        session_id="S",
        details={"actions": []},
    )


def test_parse_event_strips_surrounding_whitespace_only() -> None:
    assert parse_event(' \n{"event" : "message_end"}\t\n').raw == b'{"event" : "message_end"}'


def test_parse_event_missing_fields_are_none() -> None:
    assert parse_event("{}") == BusinessEvent(b"{}", None, None, None, None)


def test_parse_event_non_string_fields() -> None:
    # A non-string session id is kept as "" so that it never matches a real one (§2.3).
    parsed = parse_event('{"event":1,"type":["chat"],"session_id":7,"details":"x"}')
    assert (parsed.event, parsed.type, parsed.session_id, parsed.details) == (
        None,
        None,
        "",
        "x",
    )


def test_parse_event_keeps_unicode_bytes() -> None:
    parsed = parse_event('{"event":"message","details":{"answer":"小智 🙂"}}')
    assert parsed.raw == '{"event":"message","details":{"answer":"小智 🙂"}}'.encode()
    assert parsed.details == {"answer": "小智 🙂"}


def test_parse_event_big_integer() -> None:
    data = f'{{"event":"message","type":"data","session_id":"S","details":{{"n":{BIG}}}}}'
    parsed = parse_event(data)
    assert parsed.raw == data.encode()  # what the device receives, digit for digit
    assert (parsed.event, parsed.type, parsed.session_id) == ("message", "data", "S")
    assert isinstance(parsed.details, dict)
    assert list(parsed.details) == ["n"]


@pytest.mark.parametrize("data", ["[1]", '"message"', "1", "null", "true", "[]"])
def test_parse_event_non_object(data: str) -> None:
    with pytest.raises(BadEvent, match="not a JSON object"):
        parse_event(data)


@pytest.mark.parametrize("data", ["", "   ", "hello", '{"event":', "{'a':1}", '{"a":1}x'])
def test_parse_event_non_json(data: str) -> None:
    with pytest.raises(BadEvent, match="not JSON") as info:
        parse_event(data)
    assert isinstance(info.value.__cause__, ValueError)


def test_bad_event_is_a_value_error() -> None:
    assert issubclass(BadEvent, ValueError)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_parse_event_rejects_non_finite_literals(literal: str) -> None:
    with pytest.raises(BadEvent):
        parse_event(f'{{"event":"message","type":"data","session_id":"S","v":{literal}}}')


def test_parse_event_deep_nesting_is_bad_event() -> None:
    with pytest.raises(BadEvent):
        parse_event("[" * 100_000)


# ---- routing ----------------------------------------------------------------------------


def test_classify_chat_with_voice() -> None:
    parsed = chat(
        answer="你好",
        tts_provider="huoshan",
        voice_type="BV051_streaming",
        speed_ratio=1.2,
        pitch_ratio=0.8,
    )
    assert classify(parsed) == Speak("你好", "huoshan", "BV051_streaming", 1.2, 0.8)


def test_classify_chat_answer_only() -> None:
    assert classify(chat(answer="hi")) == Speak("hi", None, None, None, None)


def test_classify_empty_answer_is_still_speech() -> None:
    assert classify(chat(answer="")) == Speak("")


def test_classify_integer_ratio_becomes_float() -> None:
    speak = classify(chat(answer="a", speed_ratio=2, pitch_ratio=1))
    assert speak == Speak("a", speed_ratio=2.0, pitch_ratio=1.0)
    assert speak is not None
    assert type(speak.speed_ratio) is float


@pytest.mark.parametrize("ratio", [0.1, 10.0, 10])
def test_classify_ratio_bounds_included(ratio: float) -> None:
    assert classify(chat(answer="a", speed_ratio=ratio)) == Speak("a", speed_ratio=float(ratio))


@pytest.mark.parametrize("ratio", [0.09, 0, -1, 10.01, 11, 1e300, BIG, -BIG])
def test_classify_ratio_out_of_range_is_none(ratio: float) -> None:
    assert classify(chat(answer="a", speed_ratio=ratio, pitch_ratio=ratio)) == Speak("a")


@pytest.mark.parametrize("ratio", ["1.0", True, False, None, [1.0], {"v": 1}])
def test_classify_ratio_not_a_number_is_none(ratio: object) -> None:
    assert classify(chat(answer="a", speed_ratio=ratio, pitch_ratio=ratio)) == Speak("a")


def test_classify_non_string_voice_fields_are_none() -> None:
    assert classify(chat(answer="a", tts_provider=1, voice_type=["v"])) == Speak("a")


@pytest.mark.parametrize("answer", [None, 1, ["hi"], {"text": "hi"}])
def test_classify_chat_without_string_answer(answer: object) -> None:
    assert classify(chat(answer=answer)) is None


def test_classify_chat_without_answer() -> None:
    assert classify(chat(tts_provider="huoshan")) is None


def test_classify_chat_with_emotion() -> None:
    data = (
        '{"event":"message","type":"chat","session_id":"S",'
        '"details":{"answer":"Hooray!","emotion":"happy"}}'
    )
    assert classify(parse_event(data)) == Speak("Hooray!", emotion="happy")


@pytest.mark.parametrize("emotion", [" sad\t", "e" * 32])
def test_classify_emotion_stripped_up_to_32_chars(emotion: str) -> None:
    assert classify(chat(answer="a", emotion=emotion)) == Speak("a", emotion=emotion.strip())


@pytest.mark.parametrize("emotion", ["", "  ", "e" * 33, 1, None, ["happy"], {"v": "happy"}])
def test_classify_emotion_not_a_word_is_ignored(emotion: object) -> None:
    assert classify(chat(answer="a", emotion=emotion)) == Speak("a")


@pytest.mark.parametrize(
    "data",
    [
        '{"event":"message","type":"command","session_id":"S",'
        '"details":{"actions":[{"action":"wag_tail","params":{"duration":3}}],"answer":"x"}}',
        '{"event":"message_end","type":"chat","session_id":"S","details":{"answer":"x"}}',
        '{"event":"error","session_id":"S","details":{"code":"x","message":"y"}}',
        '{"type":"chat","session_id":"S","details":{"answer":"x"}}',
        '{"event":"message","session_id":"S","details":{"answer":"x"}}',
        '{"event":"message","type":"chat","session_id":"S","details":"x"}',
        '{"event":"message","type":"chat","session_id":"S","details":["x"]}',
        '{"event":"message","type":"chat","session_id":"S"}',
    ],
)
def test_classify_passes_everything_else_through(data: str) -> None:
    assert classify(parse_event(data)) is None


def test_is_end() -> None:
    assert is_end(parse_event('{"event":"message_end","session_id":"S"}'))
    assert not is_end(chat(answer="a"))
    assert not is_end(parse_event('{"type":"message_end"}'))


# ---- session isolation ------------------------------------------------------------------


@pytest.mark.parametrize("lenient", [False, True])
def test_session_ok_same_session(lenient: bool) -> None:
    assert session_ok(event({"session_id": "S"}), "S", lenient=lenient)


@pytest.mark.parametrize("lenient", [False, True])
def test_session_ok_other_session_dropped(lenient: bool) -> None:
    assert not session_ok(event({"session_id": "T"}), "S", lenient=lenient)
    assert not session_ok(event({"session_id": ""}), "S", lenient=lenient)
    assert not session_ok(event({"session_id": "s"}), "S", lenient=lenient)


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("bad", ['{"session_id":1}', '{"session_id":["S"]}'])
def test_session_ok_non_string_id_is_foreign(bad: str, lenient: bool) -> None:
    assert not session_ok(parse_event(bad), "S", lenient=lenient)


@pytest.mark.parametrize("missing", ["{}", '{"session_id":null}'])
def test_session_ok_without_session_id(missing: str) -> None:
    assert not session_ok(parse_event(missing), "S", lenient=False)
    assert session_ok(parse_event(missing), "S", lenient=True)


# ---- envelope ---------------------------------------------------------------------------


def test_envelope_bytes() -> None:
    raw = b'{"event":"message_end","session_id":"S"}'
    assert envelope("S", "reset", raw, 1640995201000) == (
        b'{"session_id":"S","type":"custom","payload":{"source":"business_service",'
        b'"original_request_type":"reset",'
        b'"business_response":{"event":"message_end","session_id":"S"},'
        b'"timestamp":1640995201000}}'
    )


def test_envelope_keeps_event_bytes_untouched() -> None:
    data = (
        f'{{ "details" : {{"z":1,  "a":"小智 🙂\\u00e9", "n":1.50, "big":{BIG}}} ,\n'
        '  "session_id":"S","type" :"command", "event":"message" }'
    )
    parsed = parse_event(data)
    message = envelope("S", "chat", parsed.raw, 1640995201000.7)  # type: ignore[arg-type]
    prefix = (
        b'{"session_id":"S","type":"custom","payload":{"source":"business_service",'
        b'"original_request_type":"chat","business_response":'
    )
    assert message == prefix + data.encode() + b',"timestamp":1640995201000}}'
    decoded = json.loads(message)  # big integer: the stdlib parser
    assert decoded == {
        "session_id": "S",
        "type": "custom",
        "payload": {
            "source": "business_service",
            "original_request_type": "chat",
            "business_response": {
                "details": {"z": 1, "a": "小智 🙂é", "n": 1.5, "big": BIG},
                "session_id": "S",
                "type": "command",
                "event": "message",
            },
            "timestamp": 1640995201000,
        },
    }
    assert list(decoded["payload"]) == [
        "source",
        "original_request_type",
        "business_response",
        "timestamp",
    ]
    assert list(decoded["payload"]["business_response"]) == [
        "details",
        "session_id",
        "type",
        "event",
    ]


def test_envelope_escapes_session_and_request_type() -> None:
    message = envelope('a"b', "ré\\q", b"{}", 0)
    assert message == (
        b'{"session_id":"a\\"b","type":"custom","payload":{"source":"business_service",'
        b'"original_request_type":"r\xc3\xa9\\\\q","business_response":{},"timestamp":0}}'
    )
    assert orjson.loads(message)["session_id"] == 'a"b'


# ---- errors -----------------------------------------------------------------------------


def test_error_event_bytes() -> None:
    assert error_event("S", BusinessError.TIMEOUT) == (
        b'{"event":"error","session_id":"S","details":'
        b'{"code":"business_timeout","message":"business service did not answer in time"}}'
    )


@pytest.mark.parametrize("code", list(BusinessError))
def test_error_event_shape(code: BusinessError) -> None:
    raw = error_event("S", code)
    assert orjson.loads(raw) == {
        "event": "error",
        "session_id": "S",
        "details": {"code": code.value, "message": MESSAGES[code]},
    }
    parsed = parse_event(raw.decode())
    assert (parsed.event, parsed.session_id, classify(parsed), is_end(parsed)) == (
        "error",
        "S",
        None,
        False,
    )
    assert orjson.loads(envelope("S", "chat", parsed.raw, 5))["payload"]["business_response"] == (
        orjson.loads(raw)
    )


# ---- who is asking (§2.1) -------------------------------------------------------------

DOC_BODY = (
    b'{"auth":{"device_id":"669C4BDA13EA"},"type":"chat","details":{"msg":"hello",'
    b'"session_id":"q3JxVwQyX1m8W9cUe0m4ZQ","timestamp":1717000000000}}'
)


def test_signature_is_the_documented_example() -> None:
    assert signature("change-me", DOC_BODY, 1717000000) == (
        "t=1717000000,v1=08b82e2a10cd3667c28ff49d4b96c07b3c7f00538ea2e60e4e3c837fc7d5e1ae"
    )


@pytest.mark.parametrize("body", [b"", b"{}", b'{"a":"\\u00e9"}', "é 设备".encode(), bytes(256)])
@pytest.mark.parametrize("secret", ["s", "päss wörd", "x" * 200])
def test_signature_is_hmac_sha256_of_t_dot_body(body: bytes, secret: str) -> None:
    t = 1700000000
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    assert signature(secret, body, t) == f"t={t},v1={mac}"


def test_relay_headers_with_a_secret() -> None:
    headers = relay_headers("669C4BDA13EA", "sid-1", DOC_BODY, secret="change-me", now=1717000000)
    assert headers == {
        "X-Relay-Device-Id": "669C4BDA13EA",
        "X-Relay-Session-Id": "sid-1",
        "X-Relay-Signature": signature("change-me", DOC_BODY, 1717000000),
    }


def test_relay_headers_without_a_secret_are_unsigned() -> None:
    headers = relay_headers("669C4BDA13EA", "sid-1", DOC_BODY, secret="", now=1717000000)
    assert headers == {"X-Relay-Device-Id": "669C4BDA13EA", "X-Relay-Session-Id": "sid-1"}


@pytest.mark.parametrize(
    "text",
    ["669C4BDA13EA", "dev-1_a.b~c", "!#$&'()*+,/:;<=>?@[]^`{|}\"", "q3JxVwQyX1m8W9cUe0m4ZQ"],
)
def test_header_value_keeps_visible_ascii(text: str) -> None:
    assert header_value(text) == text


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("100%", "100%25"),
        ("a b", "a%20b"),
        ("x\r\ny: z", "x%0D%0Ay:%20z"),
        ("\x7f\x00", "%7F%00"),
        ("Küche", "K%C3%BCche"),
        ("设备", "%E8%AE%BE%E5%A4%87"),
    ],
)
def test_header_value_percent_encodes_the_rest(text: str, encoded: str) -> None:
    assert header_value(text) == encoded
    assert unquote(encoded) == text


# ---- device tools (§3.1, §3.3) ------------------------------------------------------------


def test_chat_request_carries_the_tool_list_untouched() -> None:
    tools = (
        b'[{"name":"self.x","description":"","inputSchema":{"n":123456789012345678901234567890}}]'
    )
    body = chat_request("D", "louder", "S", 5, tools)
    assert tools in body
    assert json.loads(body)["details"] == {
        "msg": "louder",
        "session_id": "S",
        "timestamp": 5,
        "tools": json.loads(tools),
    }
    assert "tools" not in orjson.loads(chat_request("D", "hi", "S", 5))["details"]


def test_mcp_notification_request() -> None:
    payload = b'{"jsonrpc":"2.0","method":"notifications/state_changed","params":{"n":1.50}}'
    body = mcp_notification_request("D", payload, "S", 7)
    assert payload in body
    assert orjson.loads(body) == {
        "auth": {"device_id": "D"},
        "type": "mcp_notification",
        "details": {"payload": orjson.loads(payload), "session_id": "S", "timestamp": 7},
    }


def _event(details: Any, **top: Any) -> Any:
    raw = orjson.dumps(
        {"event": "message", "type": "tool_call", "session_id": "S", "details": details, **top}
    )
    return parse_event(raw.decode())


def test_tool_call_events() -> None:
    raw = (
        '{"event":"message","type":"tool_call","session_id":"S",'
        '"details":{"call_id":"c1","name":"self.v","arguments":{"volume": 1.50}}}'
    )
    assert tool_call(parse_event(raw), "S") == ToolCall("c1", "self.v", b'{"volume": 1.50}', "S")
    assert tool_call(_event({"call_id": "c2", "name": "self.v"}), "S") == ToolCall(
        "c2", "self.v", b"{}", "S"
    )
    assert tool_call(_event({"name": "self.v", "arguments": [1]}), "S") == ToolCall(
        "", "self.v", b"{}", "S", "bad_arguments"
    )
    assert tool_call(_event({"call_id": 5}), "S") == ToolCall("", "", b"{}", "S", "unknown_tool")
    assert tool_call(_event("x"), "S") == ToolCall("", "", b"{}", "S", "unknown_tool")
    assert tool_call(_event({}, type="chat"), "S") is None
    assert tool_call(_event({}, event="message_end"), "S") is None


def test_tool_result_request() -> None:
    call = ToolCall("c1", "self.v", b"{}", "S")
    body = tool_result_request(
        "D", call, b'{"is_error":false,"result":{"n":123456789012345678901234567890}}', 9
    )
    assert b"123456789012345678901234567890" in body
    assert json.loads(body) == {
        "auth": {"device_id": "D"},
        "type": "tool_result",
        "details": {
            "call_id": "c1",
            "name": "self.v",
            "is_error": False,
            "result": {"n": 123456789012345678901234567890},
            "session_id": "S",
            "timestamp": 9,
        },
    }
