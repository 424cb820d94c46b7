"""Fuzzing the pure decoders (protocol/): whatever a peer sends, nothing escapes but the
documented error types. Bounded and derandomized: the same examples on every run."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import business, device, device_push, jsonutil
from protocol.binary import FrameType, decode_frame
from protocol.device import Hello
from protocol.errors import MESSAGES, ProtocolError
from protocol.sse import SSEDecoder, SSEEvent
from tests.fuzz.gen import device_objects, frames_of, hellos, json_values, nested

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decode_or_error(data: str | bytes) -> device.DeviceMessage | ProtocolError:
    try:
        got: device.DeviceMessage | ProtocolError = device.decode(data)
    except ProtocolError as exc:
        got = exc
    if isinstance(got, ProtocolError):
        assert got.code in MESSAGES  # a code the device can be told
    return got


# ---- device text frames ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_frame_decodes_or_is_a_protocol_error(data: str | bytes) -> None:
    decode_or_error(data)


@FUZZ
@given(device_objects(), st.booleans())
def test_any_message_shape_decodes_or_is_a_protocol_error(obj: dict[str, Any], raw: bool) -> None:
    text = jsonutil.dumps(obj)
    got = decode_or_error(text if raw else text.decode())
    if isinstance(got, device.Custom | device.Mcp):
        # The payload is forwarded as its own source text: it must be that JSON, unchanged.
        assert jsonutil.loads(got.payload) == jsonutil.loads(text)["payload"]


@FUZZ
@given(nested(), st.sampled_from(["custom", "mcp", "iot", "listen", "hello"]))
def test_deep_nesting_is_a_protocol_error_never_a_crash(deep: str, mtype: str) -> None:
    got = decode_or_error(f'{{"type":"{mtype}","payload":{deep},"states":{deep}}}')
    assert isinstance(got, ProtocolError) or deep.count("[") + deep.count("{") < 64


@FUZZ
@given(hellos())
def test_any_hello_is_a_hello_in_bounds_or_a_protocol_error(obj: dict[str, Any]) -> None:
    got = decode_or_error(jsonutil.dumps(obj))
    if isinstance(got, Hello):
        ap = got.audio_params
        assert ap.format in ("opus", "pcm")
        assert 8000 <= ap.sample_rate <= 48000
        assert 1 <= ap.channels <= 2
        assert 10 <= ap.frame_duration_ms <= 120
        assert 0 <= got.play_buffer_ms <= 10000


# ---- binary frames --------------------------------------------------------------------------


@FUZZ
@given(st.data(), st.sampled_from([1, 2, 3]))
def test_any_binary_frame_decodes_or_is_a_protocol_error(data: st.DataObject, version: int) -> None:
    frame = data.draw(frames_of(version))
    try:
        got = decode_frame(version, frame)
    except ProtocolError as exc:
        code = str(exc.code)
    else:
        assert got.type in (FrameType.AUDIO, FrameType.JSON)
        assert len(got.payload) <= len(frame)
        return
    assert code == "bad_frame"


# ---- SSE streams ----------------------------------------------------------------------------

EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])
sse_lines = st.one_of(
    st.builds(lambda v, e: b"data: " + v + e, st.binary(max_size=30), EOLS),
    st.builds(lambda v, e: b"event:" + v + e, st.binary(max_size=10), EOLS),
    st.builds(lambda v, e: b"id: " + v + e, st.binary(max_size=10), EOLS),
    st.builds(lambda v, e: b":" + v + e, st.binary(max_size=10), EOLS),
    EOLS,
    st.binary(max_size=40),  # anything, bad UTF-8 included
    st.builds(lambda n: b"data: " + b"x" * n, st.integers(0, 5000)),  # a giant line
    st.just(b"\xef\xbb\xbf"),
)


def run_decoder(stream: bytes, cuts: list[int], max_bytes: int) -> list[SSEEvent]:
    dec = SSEDecoder(max_event_bytes=max_bytes)
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        events += dec.feed(stream[start:cut])
        start = cut
    events += dec.feed(stream[start:])
    return events + dec.close()


@FUZZ
@given(st.lists(sse_lines, max_size=30), st.lists(st.integers(0, 1 << 16), max_size=12))
def test_sse_any_stream_in_any_chunking_gives_the_same_events(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(lines)
    whole = run_decoder(stream, [], 2048)
    assert run_decoder(stream, cuts, 2048) == whole
    assert run_decoder(stream, list(range(len(stream))), 2048) == whole  # byte by byte
    for ev in whole:
        assert ev.oversized or len(ev.data.encode()) <= 2048
        try:
            parsed = business.parse_event(ev.data)
        except business.BadEvent:
            continue
        business.classify(parsed)  # the routing rule takes whatever parsed
        business.is_end(parsed)


# ---- JSON and API bodies ----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=120) | json_values.map(jsonutil.dumps) | nested().map(str.encode))
def test_loads_returns_or_raises_value_error(data: bytes) -> None:
    try:
        value = jsonutil.loads(data)
    except ValueError:
        return
    if isinstance(value, dict):
        # Every member's source text parses to the member itself (the forwarding path).
        text = data.decode()
        for key, source in jsonutil.members(text).items():
            assert json.loads(source) == value[key] or source.strip().lower() in ("nan",)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "emotion", "status", "message", "command", "event", "session_id", "x"]
        ),
        json_values,
        max_size=6,
    )
)
def test_device_push_decodes_or_names_the_field(obj: dict[str, Any]) -> None:
    try:
        pushed = device_push.decode(jsonutil.dumps(obj).decode())
    except device_push.BadDevicePush as exc:
        told = (exc.error, exc.hint)
    else:
        assert pushed.type in device_push.PUSH_TYPES
        assert orjson.loads(pushed.message("S"))["session_id"] == "S"
        return
    assert all(told)
