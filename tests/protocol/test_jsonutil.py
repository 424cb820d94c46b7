"""JSON helpers: orjson on the fast path, the stdlib where orjson refuses."""

from __future__ import annotations

import json

import pytest

from protocol import jsonutil

BIG = 123456789012345678901234567890
HUGE = int("9" * 400)  # beyond the double range: orjson fails outright


def test_loads_fast_path() -> None:
    assert jsonutil.loads(b'{"b":[1,2.5,true,null],"a":"\xc3\xa9"}') == {
        "b": [1, 2.5, True, None],
        "a": "é",
    }


def test_loads_str() -> None:
    assert jsonutil.loads('{"a":"小智"}') == {"a": "小智"}


def test_loads_keeps_key_order() -> None:
    assert list(jsonutil.loads(b'{"z":1,"a":2,"m":3}')) == ["z", "a", "m"]


@pytest.mark.parametrize("value", [(1 << 64) - 1, -(1 << 63)])
def test_loads_64_bit_limits_exact(value: int) -> None:
    assert jsonutil.loads(str(value)) == value


def test_loads_fallback_keeps_huge_integer() -> None:
    result = jsonutil.loads(f'{{"n":{HUGE}}}')
    assert result == {"n": HUGE}
    assert type(result["n"]) is int


@pytest.mark.parametrize("data", [b"", b"{", b"nope", b"{'a':1}", b"[1,]", b'{"a":1}x'])
def test_loads_invalid_raises_value_error(data: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        jsonutil.loads(data)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "[NaN]"])
def test_loads_rejects_non_finite_literals(literal: str) -> None:
    with pytest.raises(ValueError, match="is not JSON"):
        jsonutil.loads(literal)


@pytest.mark.parametrize(
    "data",
    [b'"\\ud800"', b'{"a":"\\udfff"}', b'{"\\ud800":1}', b'[1,["ok","\\ud800"]]'],
)
def test_loads_rejects_lone_surrogates_anywhere(data: bytes) -> None:
    with pytest.raises(UnicodeEncodeError):
        jsonutil.loads(data)


def test_loads_fallback_walks_lists_and_keeps_surrogate_pairs() -> None:
    # A huge integer sends the document to the stdlib; a proper pair is one character.
    assert jsonutil.loads(f'[{HUGE},["\\ud83d\\ude42",null]]'.encode()) == [HUGE, ["🙂", None]]


def test_dumps_fast_path() -> None:
    assert jsonutil.dumps({"z": [1, 2.5, True, None], "a": "é 🙂"}) == (
        b'{"z":[1,2.5,true,null],"a":"\xc3\xa9 \xf0\x9f\x99\x82"}'
    )


def test_dumps_fallback_for_big_integer() -> None:
    # Same compact form as the fast path: no spaces, raw UTF-8, key order kept.
    assert jsonutil.dumps({"z": [1, 2.5, True, None], "a": "é 🙂", "n": BIG}) == (
        b'{"z":[1,2.5,true,null],"a":"\xc3\xa9 \xf0\x9f\x99\x82",'
        b'"n":123456789012345678901234567890}'
    )


def test_dumps_fallback_for_huge_integer() -> None:
    assert jsonutil.dumps([HUGE]) == b"[" + b"9" * 400 + b"]"


def test_dumps_unserialisable_still_raises_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonutil.dumps({"a": {1, 2}})


def test_round_trip_of_huge_integer_payload() -> None:
    text = f'{{"b":"小智","n":{HUGE},"a":[]}}'
    assert jsonutil.dumps(jsonutil.loads(text)) == text.encode()


# ---- member_text: a member's exact source text -------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('{"a":1,"b":[2]}', "a", "1"),
        ('{"a":1,"b":[2]}', "b", "[2]"),
        (' \t\r\n{ "a" : { "x" : "}," } , "b":2 }\n', "a", '{ "x" : "}," }'),
        (f'{{"n":{BIG},"m":1.50e+3}}', "n", str(BIG)),
        ('{"n":1,"m":1.50e+3}', "m", "1.50e+3"),
        ('{"s":"\\u00e9\\"\\\\","t":0}', "s", '"\\u00e9\\"\\\\"'),
        ('{"\\u0061":"escaped name"}', "a", '"escaped name"'),
        ('{"a":1,"a":"last"}', "a", '"last"'),
        ('{"a":null}', "a", "null"),
    ],
)
def test_member_text(text: str, key: str, expected: str) -> None:
    assert jsonutil.member_text(text, key) == expected


@pytest.mark.parametrize(
    ("text", "key"),
    [("{}", "a"), ("{ }", "a"), ('{"a":1,"b":2}', "c"), ("[1]", "a"), ('"a"', "a"), ("", "a")],
)
def test_member_text_absent(text: str, key: str) -> None:
    assert jsonutil.member_text(text, key) is None


def test_members_in_order_as_written_last_repeated_name_winning() -> None:
    text = f' {{ "b" : [1, 2] ,"a":{BIG}, "\\u0063":"c", "b":1.50 }}'
    assert jsonutil.members(text) == {"b": "1.50", "a": str(BIG), "c": '"c"'}
    assert list(jsonutil.members(text)) == ["b", "a", "c"]


@pytest.mark.parametrize("text", ["{}", "[1]", '"a"', "", "null"])
def test_members_of_no_object_or_an_empty_one(text: str) -> None:
    assert jsonutil.members(text) == {}


def test_member_text_is_a_substring_of_the_source() -> None:
    member = f'{{"z":1, "big": {BIG}, "u":"小智 🙂"}}'
    found = jsonutil.member_text(f'{{"payload": {member} }}', "payload")
    assert found == member
    assert json.loads(found) == {"z": 1, "big": BIG, "u": "小智 🙂"}


def nested(depth: int, inner: str = "1") -> str:
    """`inner` inside `depth` levels of alternating arrays and objects."""
    text = inner
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


@pytest.mark.parametrize("depth", [1, jsonutil.MAX_DEPTH])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_loads_accepts_nesting_up_to_the_limit(depth: int, as_bytes: bool) -> None:
    text = nested(depth)
    assert jsonutil.loads(text.encode() if as_bytes else text) == json.loads(text)


@pytest.mark.parametrize("depth", [jsonutil.MAX_DEPTH + 1, 1000, 1024, 1025, 5000])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_loads_refuses_deeper_nesting(depth: int, as_bytes: bool) -> None:
    # 1000: orjson parses it and the stdlib's scanner would overflow; 1025 and more: orjson
    # refuses it and the stdlib fallback would overflow.
    text = nested(depth)
    with pytest.raises(jsonutil.TooDeep, match="deeper than 64 levels"):
        jsonutil.loads(text.encode() if as_bytes else text)


@pytest.mark.parametrize("depth", [jsonutil.MAX_DEPTH + 1, 900, 3000])
def test_loads_refuses_deep_nesting_on_the_stdlib_path(depth: int) -> None:
    # A number beyond a double sends the document to the stdlib.
    with pytest.raises(jsonutil.TooDeep):
        jsonutil.loads(nested(depth, str(HUGE)))


def test_loads_counts_no_bracket_inside_a_string() -> None:
    text = '["' + "[{" * 100 + '\\"' + "]}" * 3 + '", {"a": [1, "]"]}]'
    assert jsonutil.loads(text)[1] == {"a": [1, "]"]}


def test_loads_many_shallow_brackets_are_fine() -> None:
    text = "[" + ",".join(['{"a":[1,{"b":[]}]}'] * 500) + "]"
    assert len(jsonutil.loads(text.encode())) == 500


def test_member_text_of_the_deepest_accepted_document() -> None:
    # What loads accepts, members can scan: the stdlib scanner is safe under the limit.
    inner = nested(jsonutil.MAX_DEPTH - 1)
    text = f'{{"payload":{inner}}}'
    jsonutil.loads(text)
    assert jsonutil.member_text(text, "payload") == inner
