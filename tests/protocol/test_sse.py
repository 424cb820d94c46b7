"""Incremental SSE decoder (WHATWG rules, docs/protocol.md §2.2): bytes in, events out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEEvent

BOM = b"\xef\xbb\xbf"


def feed(chunks: Iterable[bytes], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[SSEEvent]:
    """Feed every chunk, then close the stream; all events in order."""
    decoder = SSEDecoder(max_event_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def whole(stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[SSEEvent]:
    """The stream fed as one chunk."""
    return feed([stream], max_event_bytes)


def bytewise(stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[SSEEvent]:
    """The stream fed one byte at a time: every possible split point at once."""
    return feed([stream[i : i + 1] for i in range(len(stream))], max_event_bytes)


def parse(stream: bytes, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[SSEEvent]:
    """Events of `stream`, checked to be the same whether fed whole or byte by byte."""
    events = whole(stream, max_event_bytes)
    assert bytewise(stream, max_event_bytes) == events
    return events


# ---- fields -----------------------------------------------------------------------------


def test_data_without_space() -> None:
    assert parse(b"data:x\n\n") == [SSEEvent("x")]


def test_data_one_space_stripped() -> None:
    assert parse(b"data: x\n\n") == [SSEEvent("x")]


def test_data_only_one_space_stripped() -> None:
    assert parse(b"data:  x \n\n") == [SSEEvent(" x ")]


def test_value_may_contain_colons() -> None:
    assert parse(b'data: {"a":"b:c"}\n\n') == [SSEEvent('{"a":"b:c"}')]


def test_field_without_colon_is_field_with_empty_value() -> None:
    assert parse(b"data\n\n") == [SSEEvent("")]


def test_field_name_is_exact() -> None:
    assert parse(b"data : x\nDATA: y\n\n") == []


def test_empty_data_line() -> None:
    assert parse(b"data:\n\n") == [SSEEvent("")]


def test_multi_line_data_joined_with_lf() -> None:
    assert parse(b"data: a\ndata:\ndata: b\n\n") == [SSEEvent("a\n\nb")]


def test_two_events() -> None:
    assert parse(b"data: 1\n\ndata: 2\n\n") == [SSEEvent("1"), SSEEvent("2")]


def test_event_type() -> None:
    assert parse(b"event: add\ndata: 1\n\n") == [SSEEvent("1", "add")]


def test_empty_event_type_is_message() -> None:
    assert parse(b"event:\ndata: 1\n\nevent\ndata: 2\n\n") == [SSEEvent("1"), SSEEvent("2")]


def test_event_type_reset_after_dispatch() -> None:
    stream = b"event: add\ndata: 1\n\ndata: 2\n\n"
    assert parse(stream) == [SSEEvent("1", "add"), SSEEvent("2", "message")]


def test_event_type_reset_by_blank_line_without_data() -> None:
    assert parse(b"event: add\n\ndata: 2\n\n") == [SSEEvent("2", "message")]


def test_last_event_type_wins() -> None:
    assert parse(b"event: a\nevent: b\ndata: 1\n\n") == [SSEEvent("1", "b")]


def test_id_persists_across_events() -> None:
    stream = b"id: 7\ndata: a\n\ndata: b\n\n"
    assert parse(stream) == [SSEEvent("a", id="7"), SSEEvent("b", id="7")]


def test_id_from_block_without_data_persists() -> None:
    assert parse(b"id: 5\n\ndata: x\n\n") == [SSEEvent("x", id="5")]


def test_id_with_nul_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    assert parse(stream) == [SSEEvent("a", id="1"), SSEEvent("b", id="1")]


def test_empty_id_resets_to_empty_string() -> None:
    assert parse(b"id: 1\ndata: a\n\nid\ndata: b\n\n") == [
        SSEEvent("a", id="1"),
        SSEEvent("b", id=""),
    ]


def test_retry_and_unknown_fields_ignored() -> None:
    assert parse(b"retry: 1000\nfoo: bar\nretry\ndata: x\n\n") == [SSEEvent("x")]


def test_comments_ignored() -> None:
    assert parse(b": keepalive\ndata: x\n:\n: data: y\n\n") == [SSEEvent("x")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert parse(b"\n\n\r\n: c\n\nevent: e\n\nid: 1\n\nretry: 5\n\n") == []


def test_empty_stream() -> None:
    assert parse(b"") == []


# ---- line endings -----------------------------------------------------------------------


def test_crlf_cr_lf_line_endings() -> None:
    stream = b"data: a\r\rdata: b\r\n\r\ndata: c\n\ndata: d\r\n\n"
    assert parse(stream) == [SSEEvent("a"), SSEEvent("b"), SSEEvent("c"), SSEEvent("d")]


def test_cr_then_crlf_is_two_line_ends() -> None:
    assert parse(b"data: a\r\r\ndata: b\n\n") == [SSEEvent("a"), SSEEvent("b")]


def test_lf_cr_is_two_line_ends() -> None:
    assert parse(b"data: a\n\rdata: b\n\n") == [SSEEvent("a"), SSEEvent("b")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # Were the LF taken for a blank line, "a" and "b" would be two events.
    assert feed([b"data: a\r", b"\ndata: b\n\n"]) == [SSEEvent("a\nb")]


def test_crlf_split_by_empty_chunk() -> None:
    assert feed([b"data: a\r", b"", b"\ndata: b\n\n"]) == [SSEEvent("a\nb")]


def test_lone_cr_at_chunk_end_then_other_byte() -> None:
    assert feed([b"data: a\r", b"data: b\n\n"]) == [SSEEvent("a\nb")]


def test_cr_chunk_then_cr_chunk() -> None:
    assert feed([b"data: a\r", b"\r", b"\ndata: b\n\n"]) == [SSEEvent("a"), SSEEvent("b")]


def test_events_returned_by_the_feed_that_completes_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\ndata") == [SSEEvent("a"), SSEEvent("b")]
    assert decoder.feed(b": c\n") == []
    assert decoder.feed(b"\r\n") == [SSEEvent("c")]
    assert decoder.close() == []


# ---- encoding ---------------------------------------------------------------------------


def test_utf8_split_inside_multibyte_char() -> None:
    stream = "data: 你好 🙂\n\n".encode()
    for cut in range(len(stream) + 1):
        assert feed([stream[:cut], stream[cut:]]) == [SSEEvent("你好 🙂")]


def test_invalid_utf8_replaced() -> None:
    assert parse(b"data: \xff\xe4\xbd\n\n") == [SSEEvent("\ufffd\ufffd")]


def test_line_separators_inside_value_are_not_line_ends() -> None:
    value = "a\u2028b\x85c\x0bd\x0ce"
    assert parse(f"data: {value}\n\n".encode()) == [SSEEvent(value)]


def test_bom_stripped_at_stream_start() -> None:
    assert parse(BOM + b"data: x\n\n") == [SSEEvent("x")]


def test_bom_split_across_chunks() -> None:
    stream = BOM + b"data: x\n\n"
    for cut in range(1, 4):
        assert feed([stream[:cut], stream[cut:]]) == [SSEEvent("x")]


def test_bom_alone_on_first_line_is_a_blank_line() -> None:
    assert parse(BOM + b"\ndata: x\n\n") == [SSEEvent("x")]


def test_only_one_bom_stripped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", an unknown field.
    assert parse(BOM + BOM + b"data: x\n\ndata: y\n\n") == [SSEEvent("y")]


def test_bom_not_stripped_after_stream_start() -> None:
    assert parse(b"data: a\n\n" + BOM + b"data: b\n\n") == [SSEEvent("a")]


def test_bom_after_empty_first_line_not_stripped() -> None:
    assert parse(b"\n" + BOM + b"data: b\n\n") == []


def test_bom_inside_value_kept() -> None:
    assert parse(b"data: " + BOM + b"x\n\n") == [SSEEvent("\ufeffx")]


# ---- end of stream ----------------------------------------------------------------------


def test_close_flushes_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: end\nid: 3\ndata: last\n") == []
    assert decoder.close() == [SSEEvent("last", "end", "3")]


def test_close_flushes_unterminated_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: last") == []
    assert decoder.close() == [SSEEvent("a\nlast")]


def test_close_after_lone_cr() -> None:
    assert feed([b"data: last\r"]) == [SSEEvent("last")]


def test_close_after_complete_event_yields_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\n") == [SSEEvent("x")]
    assert decoder.close() == []


def test_close_without_data_yields_nothing() -> None:
    assert feed([b"event: x\nid: 1\n: c"]) == []


def test_close_strips_bom_of_single_unterminated_line() -> None:
    assert feed([BOM + b"data: x"]) == [SSEEvent("x")]


# ---- size cap ---------------------------------------------------------------------------


def test_oversized_event_dropped_and_next_event_intact() -> None:
    stream = b"data: " + b"x" * 20 + b"\n\ndata: ok\n\n"
    assert parse(stream, 16) == [SSEEvent("", oversized=True), SSEEvent("ok")]


def test_oversized_event_keeps_type_and_id() -> None:
    stream = (
        b"id: 9\nevent: big\ndata: " + b"x" * 40 + b"\ndata: more\n\nevent: small\ndata: ok\n\n"
    )
    assert parse(stream, 16) == [
        SSEEvent("", "big", "9", oversized=True),
        SSEEvent("ok", "small", "9"),
    ]


def test_size_cap_is_inclusive() -> None:
    assert parse(b"data: ok\n\n", 8) == [SSEEvent("ok")]  # "data: ok" is 8 bytes
    assert parse(b"data: ok!\n\n", 8) == [SSEEvent("", oversized=True)]


def test_size_cap_counts_all_data_lines_of_an_event() -> None:
    stream = b"data: aaaa\ndata: bbbb\n\ndata: cc\n\n"  # 10 + 10 bytes of data lines
    assert parse(stream, 19) == [SSEEvent("", oversized=True), SSEEvent("cc")]
    assert parse(stream, 20) == [SSEEvent("aaaa\nbbbb"), SSEEvent("cc")]


def test_lines_after_cap_ignored_until_blank_line() -> None:
    stream = b"data: " + b"x" * 20 + b"\nevent: late\nid: 4\ndata: y\n\ndata: ok\n\n"
    assert parse(stream, 16) == [SSEEvent("", oversized=True), SSEEvent("ok")]


def test_oversized_unterminated_event_flushed_at_close() -> None:
    assert parse(b"data: ok\n\ndata: " + b"x" * 40, 16) == [
        SSEEvent("ok"),
        SSEEvent("", oversized=True),
    ]


def test_many_oversized_events_then_normal_ones() -> None:
    big = b"data: " + b"y" * 100 + b"\r\n\r\n"
    stream = big * 3 + b"data: 1\r\rdata: 2\r\n\r\n"
    assert parse(stream, 32) == [SSEEvent("", oversized=True)] * 3 + [
        SSEEvent("1"),
        SSEEvent("2"),
    ]


# ---- any chunking gives the same events -------------------------------------------------

_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
_CHAR = st.one_of(
    # Multibyte UTF-8 (2, 3 and 4 bytes), a BOM, and characters other parsers take for EOL.
    st.sampled_from(["a", " ", ":", "é", "中", "🙂", "\ufeff", "\u2028", "\x85", "\x0c"]),
    st.characters(codec="utf-8", exclude_characters="\r\n\0"),
)
_VALUE = st.text(_CHAR, max_size=6)


@dataclass(frozen=True)
class Line:
    """One line of a generated stream, and what it does to the event being built."""

    text: str
    data: str | None = None  # appended to the data buffer
    event: str | None = None  # sets the event type
    id: str | None = None  # sets the last event id


@st.composite
def lines(draw: st.DrawFn) -> Line:
    """A random non-blank SSE line with its meaning."""
    kind = draw(st.sampled_from(["data", "bare-data", "event", "id", "retry", "comment", "other"]))
    if kind == "bare-data":
        return Line("data", data="")
    if kind == "retry":
        return Line(f"retry: {draw(st.integers(0, 10**6))}")
    if kind == "other":
        return Line(f"x-{draw(st.text('abc', max_size=3))}: {draw(_VALUE)}")
    value = draw(_VALUE)
    if kind == "comment":
        return Line(f":{value}")
    if kind == "id":
        value += draw(st.sampled_from(["", "", "\0"]))
        return Line(f"id: {value}", id=value)
    space = " " if value.startswith(" ") else draw(st.sampled_from(["", " "]))
    if kind == "event":
        return Line(f"event:{space}{value}", event=value)
    return Line(f"data:{space}{value}", data=value)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A random stream of events, and the events a WHATWG parser (plus close flush) yields."""
    blocks = draw(st.lists(st.lists(lines(), max_size=5), max_size=6))
    finish = draw(st.sampled_from(["blank line", "line end", "nothing"]))
    bom = draw(st.booleans())
    text: list[str] = ["\ufeff"] if bom else []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    previous_end = ""
    for index, block in enumerate(blocks):
        data: list[str] = []
        event = ""
        final = index == len(blocks) - 1
        for position, line in enumerate(block):
            end = draw(_ENDINGS)
            if final and finish == "nothing" and position == len(block) - 1:
                end = ""
            text += [line.text, end]
            previous_end = end
            if line.data is not None:
                data.append(line.data)
            if line.event is not None:
                event = line.event
            if line.id is not None and "\0" not in line.id:
                last_id = line.id
        if not final or finish == "blank line":
            end = draw(_ENDINGS)
            if previous_end == "\r" and end == "\n":
                end = "\r\n"  # "\r" + "\n" would be one line end, not a blank line
            text.append(end)
            previous_end = end
        if data:
            expected.append(SSEEvent("\n".join(data), event or "message", last_id))
    return "".join(text).encode(), expected


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    """Split `stream` at the given offsets."""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(generated=streams(), data=st.data())
def test_any_chunking_gives_the_events_of_the_whole_stream(
    generated: tuple[bytes, list[SSEEvent]], data: st.DataObject
) -> None:
    stream, expected = generated
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    assert whole(stream) == expected
    assert feed(chunked(stream, cuts)) == expected
    assert bytewise(stream) == expected


@settings(max_examples=200, deadline=None)
@given(generated=streams(), cap=st.integers(1, 48), data=st.data())
def test_any_chunking_gives_the_same_events_under_a_size_cap(
    generated: tuple[bytes, list[SSEEvent]], cap: int, data: st.DataObject
) -> None:
    stream, _ = generated
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    events = whole(stream, cap)
    assert feed(chunked(stream, cuts), cap) == events
    assert bytewise(stream, cap) == events
    for event in events:
        assert len(event.data.encode()) <= cap
        assert not event.oversized or event.data == ""
