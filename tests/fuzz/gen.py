"""Hostile inputs for the fuzz suite: hypothesis strategies for the pure decoders, and a
seeded generator (`Hostile`) for what is sent to a running relay, so every run sends the
same frames and bodies (CI is reproducible)."""

from __future__ import annotations

import random
import struct
from typing import Any

import orjson
from hypothesis import strategies as st

from protocol import jsonutil

DEVICE_TYPES = (
    "hello",
    "listen",
    "abort",
    "custom",
    "mcp",
    "ping",
    "goodbye",
    "iot",
    "stt",
    "tts",
    "error",
    "Hello",
    "",
)

# ---- hypothesis strategies -----------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def nested(draw: st.DrawFn) -> str:
    """Arrays and objects nested 0 to 1,500 levels deep, sometimes left unclosed."""
    depth = draw(st.integers(0, 1500))
    opener = draw(st.sampled_from(["[", '{"a":', "[1,"]))
    closer = {"[": "]", '{"a":': "}", "[1,": "]"}[opener]
    tail = closer * depth if draw(st.booleans()) else closer * draw(st.integers(0, depth))
    return opener * depth + "0" + tail


@st.composite
def device_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A device message: a known or unknown type, its fields of any type."""
    obj: dict[str, Any] = {"type": draw(st.sampled_from(DEVICE_TYPES) | json_values)}
    for key in draw(
        st.lists(
            st.sampled_from(
                ["session_id", "state", "mode", "text", "text_response", "reason", "payload"]
                + ["descriptors", "states", "version", "audio_params", "features"]
            ),
            max_size=5,
        )
    ):
        obj[key] = draw(json_values)
    return obj


audio_param_values = st.one_of(
    st.integers(-10, 200_000),
    st.sampled_from([8000, 8001, 11025, 12345, 16000, 24000, 48000, 10, 120, 0]),
    json_values,
)


@st.composite
def hellos(draw: st.DrawFn) -> dict[str, Any]:
    """A hello with each field present or not, of its type or swapped for another."""
    ap = {
        key: draw(audio_param_values)
        for key in draw(
            st.lists(
                st.sampled_from(
                    ["format", "sample_rate", "channels", "frame_duration"]
                    + ["play_buffer_duration", "bit_depth", "endianness", "frame_size"]
                ),
                max_size=6,
            )
        )
    }
    if draw(st.booleans()):
        ap["format"] = draw(st.sampled_from(["opus", "pcm", "mp3", "", "OPUS"]))
    hello: dict[str, Any] = {"type": "hello"}
    for key, value in (
        ("version", draw(st.integers(-1, 4) | json_values)),
        ("transport", draw(st.sampled_from(["websocket", "udp"]) | json_values)),
        ("audio_params", ap if draw(st.booleans()) else draw(json_values)),
        ("features", draw(json_values | st.just({"notify": {"config_updated": True}}))),
        ("device_id", draw(json_values)),
        ("token", draw(json_values)),
    ):
        if draw(st.booleans()):
            hello[key] = value
    return hello


def frames_of(version: int) -> st.SearchStrategy[bytes]:
    """Binary frames for protocol `version`: well formed, truncated, lying about their size."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        payload = draw(st.binary(max_size=64))
        ftype = draw(st.sampled_from([0, 1, 2, 255]))
        size = len(payload) + draw(st.sampled_from([0, 0, 1, -1, 1000]))
        size = max(0, size)
        if version == 2:
            head = struct.pack(">HHIII", 2, ftype, 0, draw(st.integers(0, 2**32 - 1)), size)
        else:
            head = struct.pack(">BBH", ftype, 0, min(size, 0xFFFF))
        frame = head + payload
        return frame[: draw(st.integers(0, len(frame)))] if draw(st.booleans()) else frame

    return build() | st.binary(max_size=40)


# ---- a seeded generator for the wire -------------------------------------------------------


class Hostile:
    """Device frames and HTTP bodies from a fixed seed: the same run every time."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.choice([0, -1, 1 << 64, 1 << 100, 16000, 11025, 2**31])
        if kind == 3:
            return r.uniform(-1e9, 1e9)
        if kind in (4, 5):
            return self.text()
        if kind == 6:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {self.text(8): self.value(depth + 1) for _ in range(r.randrange(4))}

    def text(self, limit: int = 24) -> str:
        r = self.rng
        pool = 'ab\n\r\t\x00\x1b"\\{}[]:,é小🙂\u2028 '
        return "".join(r.choice(pool) for _ in range(r.randrange(limit)))

    def session_id(self, real: str) -> Any:
        return self.rng.choice([real, "", "other-session", None, 7, ["x"], real + "\n"])

    def text_frame(self, session_id: str) -> str | bytes:
        """One device text frame: valid or broken JSON, wrong types, unknown types, deep."""
        r = self.rng
        kind = r.randrange(10)
        if kind == 0:  # not JSON
            return r.choice(["", "{", "nope", "{'a':1}", "[1,]", '{"type":"ping"}x', " "])
        if kind == 1 and r.random() < 0.3:  # a lone surrogate, as CESU-8 bytes
            return b'{"type":"listen","state":"detect","text":"\xed\xa0\x80"}'
        if kind == 1:  # bytes that are not UTF-8
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))
        if kind == 2:  # deep
            depth = r.choice([63, 64, 65, 500, 1000, 1025, 5000])
            deep = "[" * depth + "]" * depth
            mtype = r.choice(["custom", "mcp", "iot", "listen"])
            return f'{{"type":"{mtype}","payload":{deep},"descriptors":{deep}}}'
        if kind == 3:  # huge values
            return orjson.dumps({"type": "iot", "states": ["x" * 20_000] * r.randrange(1, 3)})
        if kind == 4:  # a hello again, odd
            return jsonutil.dumps(self.hello())
        # Every type but goodbye, which ends the connection by design (§1.3).
        types = [t for t in DEVICE_TYPES if t != "goodbye"] + ["bogus", 5, None]
        obj: dict[str, Any] = {"type": r.choice(types)}
        if r.random() < 0.7:
            obj["session_id"] = self.session_id(session_id)
        for key in r.sample(["state", "mode", "text", "reason", "payload", "states"], 2):
            obj[key] = self.value()
        if obj["type"] == "listen" and r.random() < 0.5:
            obj["state"] = r.choice(["start", "stop", "detect", "dance"])
            obj["mode"] = r.choice(["manual", "auto", "realtime", "loud", None])
        return jsonutil.dumps(obj).decode()

    def hello_text(self) -> str:
        """A hello frame, fields of odd types and odd audio formats."""
        return jsonutil.dumps(self.hello()).decode()

    def hello(self) -> dict[str, Any]:
        r = self.rng
        ap = {
            k: r.choice([self.value(), 16000, 11025, 8001, 12345, 0, -1, 60, "opus", "pcm"])
            for k in r.sample(
                ["format", "sample_rate", "channels", "frame_duration", "play_buffer_duration"],
                r.randrange(6),
            )
        }
        hello: dict[str, Any] = {"type": "hello"}
        for key in r.sample(["version", "transport", "features", "device_id", "token"], 3):
            hello[key] = self.value()
        hello["audio_params"] = ap if r.random() < 0.8 else self.value()
        return hello

    def binary_frame(self, version: int) -> bytes:
        """A binary frame for `version`: audio, JSON inside, truncated, lying, unknown type."""
        r = self.rng
        payload = r.choice([b"", b"\xf8\xff\xfe", bytes(r.randrange(256) for _ in range(40))])
        if r.random() < 0.2:
            payload = b'{"type":"ping"}'
        ftype = r.choice([0, 0, 1, 2, 255])
        size = max(0, len(payload) + r.choice([0, 0, 1, -1, 999]))
        if version == 1:
            return payload
        if version == 2:
            frame = struct.pack(">HHIII", 2, ftype, 0, r.randrange(2**32), size) + payload
        else:
            frame = struct.pack(">BBH", ftype, 0, size) + payload
        return frame[: r.randrange(len(frame) + 1)] if r.random() < 0.3 else frame

    def api_body(self, form: str) -> bytes:
        """A body for push (`form` "push") or simulate ("simulate"): broken JSON, deep JSON,
        the right members with values of the wrong type, or a valid request now and then."""
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            return r.choice([b"", b"{", b"null", b"[]", b'"x"', b"\xff\xfe", b"{}{}", b" "])
        if kind == 1:  # valid but for its depth
            depth = r.choice([62, 63, 64, 65, 1000, 1025, 3000])
            deep = "[" * depth + "]" * depth
            if form == "push":
                return f'{{"command":{{"type":"command","event":"message","d":{deep}}}}}'.encode()
            return f'{{"device_id":"{MAC_TEXT}","custom":{{"type":"get","d":{deep}}}}}'.encode()
        body: dict[str, Any] = {}
        if form == "simulate":
            body["device_id"] = r.choice([MAC_TEXT, "", " ", "x\ny", self.value()])
            if r.random() < 0.5:
                body["text"] = r.choice(["hi", "", " ", self.value()])
            if r.random() < 0.6:
                sid = self.session_id("S1")
                body["custom"] = r.choice(
                    [{"type": "get", "details": {"session_id": sid}}, self.value()]
                )
            if r.random() < 0.2:
                body["agent"] = r.choice(["fake", "nope", "", self.value()])
        else:
            for member in r.sample(["command", "speak", "voice", "device"], r.randrange(1, 3)):
                body[member] = self.value()
            if "device" in body and r.random() < 0.7:
                body["device"] = {"type": r.choice(["llm", "alert", "system", "notify", "x"])}
                for key in r.sample(["emotion", "status", "message", "command", "event"], 3):
                    body["device"][key] = r.choice([self.value(), "happy", "reboot"])
            if "command" in body and r.random() < 0.5:
                body["command"] = {"type": "command", "event": "message", "x": self.value()}
        return jsonutil.dumps(body)


MAC_TEXT = "66:9C:4B:DA:13:EA"
