"""Device text messages (docs/protocol.md §1.2, §1.3, §1.5): decoded at the edge into types."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from protocol import jsonutil
from protocol.audio_format import AudioFormat
from protocol.errors import MESSAGES, DeviceError, ProtocolError

ListenState = Literal["start", "stop", "detect"]
ListenMode = Literal["manual", "auto", "realtime"]
_STATES: tuple[ListenState, ...] = ("start", "stop", "detect")
_MODES: tuple[ListenMode, ...] = ("manual", "auto", "realtime")
DEFAULT_PLAY_BUFFER_MS = 1000  # what a device that declares none is taken to hold (§1.2)
# The most the downlink runs ahead of the device's playback, whatever its hello declares: the
# firmware queues ~2.4 s and drops the rest (§1.6).
MAX_PLAY_LEAD_MS = 2000


@dataclass(frozen=True, slots=True)
class Hello:
    """The device's first message; absent fields take the firmware's defaults (§1.2)."""

    version: int = 1
    transport: str = "websocket"
    audio_params: AudioFormat = AudioFormat()  # the uplink the device sends
    play_buffer_ms: int = DEFAULT_PLAY_BUFFER_MS  # echoed in the relay's hello
    notify_config_updated: bool = False
    mcp: bool = False  # the device is an MCP tool server (§3.1)
    device_id: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Listen:
    """`listen` start/stop/detect (§1.3)."""

    state: ListenState
    mode: ListenMode | None = None
    text: str | None = None
    text_response: str | None = None


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop speaking now (§1.3)."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Custom:
    """Pass-through payload, kept as JSON bytes so the business gets it unchanged (§2.1)."""

    payload: bytes
    request_type: str
    payload_session_id: str | None


@dataclass(frozen=True, slots=True)
class Mcp:
    """Device-side MCP traffic (JSON-RPC 2.0, §3): the payload's source text."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """App-level keepalive; answered with `pong`."""


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The device ends the session (docs/protocol.md §1.3): closed with 1000."""


@dataclass(frozen=True, slots=True)
class Iot:
    """Pre-MCP firmware announcing its things (§1.3): kept and counted, never refused, so
    the lists are kept as their source text, whatever they hold."""

    descriptors: bytes | None = None
    states: bytes | None = None


DeviceMessage = Hello | Listen | Abort | Custom | Mcp | Ping | Goodbye | Iot


def phrase_key(text: str) -> str:
    """`text` as wake words are compared (§1.3): lower-cased, without spaces or punctuation,
    so "Hi, ESP!" and "hi esp" are one word, as are "你好，小智" and "你好小智"."""
    return "".join(
        ch for ch in text.lower() if not unicodedata.category(ch).startswith(("P", "Z", "C"))
    )


# Wake words as real clients name them in `listen detect` (§1.3). The firmware sends, verbatim,
# the label of the ESP-SR WakeNet model it was built with (the third field of the model's info
# line: "嗨，乐鑫" for hilexin, "Ni3Hao3Xiao3Zhi4" for one 你好小智 model, "小滨小滨,小冰小冰" for
# a model that answers to both), or the display text of its MultiNet custom wake word (小土豆
# unless rebuilt); every stock label is here. So is the word the xiaozhi-server browser client
# sends right after its hello ("嘿，你好呀"), and spoken spellings of a few labels.
WAKE_WORDS: tuple[str, ...] = (
    # Mandarin WakeNet labels, and spellings of them
    "你好小智",
    "你好小志",
    "你好小知",
    "小智小智",
    "Ni3Hao3Xiao3Zhi4",
    "你好小鑫",
    "你好小新",
    "你好小天",
    "小爱同学",
    "Xiaoaitongxue",
    "小美同学",
    "小龙小龙",
    "喵喵同学",
    "小滨小滨",
    "小冰小冰",
    "小滨小滨,小冰小冰",
    "嗨，乐鑫",
    "你好东东",
    "你好喵伴",
    "你好小脉",
    "你好小益",
    "你好百应",
    "你好星宝",
    "Ni3Hao3Xiao3Rui4",
    "nihaoxiaoan",
    "嗨小欧",
    "嗨小象",
    "Hi,小星",
    "Hi,喵喵",
    "Hi,小巫",
    "小鸭小鸭",
    "小鹿小鹿",
    "小峰小峰",
    "小珈小珈",
    "小宇同学",
    "小康同学",
    "小明同学",
    "小特小特",
    "小箭小箭",
    "小酥肉",
    "Linaiban",
    # the firmware's default MultiNet custom wake word; the browser client's greeting
    "小土豆",
    "嘿你好呀",
    # English and other WakeNet labels, and spellings of them
    "Hi ESP",
    "Hi Lexin",
    "Hi Jason",
    "Hey Xiaozhi",
    "Alexa",
    "Jarvis",
    "Computer",
    "Mycroft",
    "Sophia",
    "Astrolabe",
    "BlueChip",
    "Hi,Joy",
    "Hi,M Five",
    "Hi,Stack Chan",
    "Hi,Lily or Hi,莉莉",
    "Hi,Wall,E or Hi,瓦力",
    "Hi Andy",
    "Hi fairy",
    "Hi jolly",
    "hitelly",
    "Hey,Willow",
    "Hey,Wanda",
    "Hey,Ily",
    "Hey Ivy",
    "Hey Kira",
    "Heyprinter",
    "Heygigi",
    "Bonjourespfr",
    "Konnichihaespja",
)


@dataclass(frozen=True, slots=True)
class DetectRules:
    """What `listen detect` text means (§1.3): a wake word, or text the user typed."""

    wake_words: frozenset[str] = frozenset(phrase_key(w) for w in WAKE_WORDS)
    wake_word_chat: bool = False  # a wake word is sent to the business as a chat too
    max_text_chars: int = 1000

    @classmethod
    def of(
        cls, wake_words: tuple[str, ...], *, wake_word_chat: bool, max_text_chars: int
    ) -> DetectRules:
        """Rules for configured wake words (compared by `phrase_key`)."""
        keys = frozenset(k for k in map(phrase_key, wake_words) if k)
        return cls(keys, wake_word_chat, max_text_chars)

    def is_wake_word(self, text: str) -> bool:
        """Whether `text` names a wake word; empty text counts as one (a bare detect)."""
        key = phrase_key(text)
        return not key or key in self.wake_words


def decode(data: str | bytes) -> DeviceMessage:
    """Decode one text frame; raise `ProtocolError` with the code the device will be told."""
    try:
        obj = jsonutil.loads(data)
    except jsonutil.TooDeep as exc:
        raise ProtocolError(DeviceError.TOO_DEEP) from exc
    except ValueError as exc:
        raise ProtocolError(DeviceError.BAD_JSON) from exc
    if not isinstance(obj, dict):
        raise ProtocolError(DeviceError.BAD_JSON)
    mtype = obj.get("type")
    if mtype is None:
        raise ProtocolError(DeviceError.MISSING_FIELD, "type")
    if mtype in ("custom", "mcp"):
        return _with_payload(mtype, obj, data)
    if mtype == "iot":
        return _iot(obj, data)
    decoder = _DECODERS.get(mtype) if isinstance(mtype, str) else None
    if decoder is None:
        raise ProtocolError(DeviceError.UNKNOWN_TYPE, str(mtype)[:32])
    return decoder(obj)


def _hello(obj: dict[str, Any]) -> Hello:
    version = obj.get("version", 1)
    ap = obj.get("audio_params")
    ap = ap if isinstance(ap, dict) else {}
    features = obj.get("features")
    notify = features.get("notify") if isinstance(features, dict) else None
    return Hello(
        version=version if isinstance(version, int) and not isinstance(version, bool) else 1,
        transport=_opt_str(obj, "transport") or "websocket",
        audio_params=_audio_params(ap),
        play_buffer_ms=_int_in(ap, "play_buffer_duration", DEFAULT_PLAY_BUFFER_MS, 0, 10000),
        notify_config_updated=isinstance(notify, dict) and notify.get("config_updated") is True,
        mcp=isinstance(features, dict) and features.get("mcp") is True,
        device_id=_opt_str(obj, "device_id"),
        token=_opt_str(obj, "token"),
    )


def _audio_params(ap: dict[str, Any]) -> AudioFormat:
    fmt = ap.get("format", "opus")
    if fmt not in ("opus", "pcm"):
        raise ProtocolError(DeviceError.INVALID_FIELD, "audio_params.format")
    default = AudioFormat()
    frame_default = 20 if fmt == "pcm" else default.frame_duration_ms
    return AudioFormat(
        format=fmt,
        sample_rate=_int_in(ap, "sample_rate", default.sample_rate, 8000, 48000),
        channels=_int_in(ap, "channels", 1, 1, 2),
        frame_duration_ms=_int_in(ap, "frame_duration", frame_default, 10, 120),
    )


def _listen(obj: dict[str, Any]) -> Listen:
    state = obj.get("state")
    if state is None:
        raise ProtocolError(DeviceError.MISSING_FIELD, "state")
    if state not in _STATES:
        raise ProtocolError(DeviceError.INVALID_FIELD, "state")
    mode = obj.get("mode")
    if mode is not None and mode not in _MODES:
        raise ProtocolError(DeviceError.INVALID_FIELD, "mode")
    return Listen(
        state=state,
        mode=mode,
        text=_opt_str(obj, "text"),
        text_response=_opt_str(obj, "text_response"),
    )


def _abort(obj: dict[str, Any]) -> Abort:
    return Abort(reason=_opt_str(obj, "reason"))


def _with_payload(mtype: str, obj: dict[str, Any], data: str | bytes) -> Custom | Mcp:
    if "payload" not in obj:
        raise ProtocolError(DeviceError.MISSING_FIELD, "payload")
    payload = obj["payload"]
    # The payload's source text, untouched: re-serialising would alter big integers (§2.1).
    text = data if isinstance(data, str) else data.decode()
    raw = jsonutil.member_text(text, "payload")
    if raw is None:  # pragma: no cover - obj was parsed from this text and has the member
        raise ProtocolError(DeviceError.MISSING_FIELD, "payload")
    payload_bytes = raw.encode()
    if mtype == "mcp":
        return Mcp(payload=payload_bytes)
    if not isinstance(payload, dict):
        raise ProtocolError(DeviceError.INVALID_FIELD, "payload")
    ptype = payload.get("type")
    details = payload.get("details")
    sid = details.get("session_id") if isinstance(details, dict) else None
    return Custom(
        payload=payload_bytes,
        request_type=ptype if isinstance(ptype, str) else "custom",
        payload_session_id=sid if isinstance(sid, str) and sid else None,
    )


def _ping(_obj: dict[str, Any]) -> Ping:
    return Ping()


def _goodbye(_obj: dict[str, Any]) -> Goodbye:
    return Goodbye()


def _iot(obj: dict[str, Any], data: str | bytes) -> Iot:
    text = data if isinstance(data, str) else data.decode()
    found = {
        key: raw.encode() if (raw := jsonutil.member_text(text, key)) is not None else None
        for key in ("descriptors", "states")
        if key in obj
    }
    return Iot(descriptors=found.get("descriptors"), states=found.get("states"))


_DECODERS: dict[str, Callable[[dict[str, Any]], DeviceMessage]] = {
    "hello": _hello,
    "listen": _listen,
    "abort": _abort,
    "ping": _ping,
    "goodbye": _goodbye,
}


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(DeviceError.INVALID_FIELD, key)
    return value


def _int_in(obj: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(DeviceError.INVALID_FIELD, f"audio_params.{key}")
    return value


# ---- relay → device (§1.2, §1.5) ---------------------------------------------------------


def hello_reply(session_id: str, downlink: AudioFormat, play_buffer_ms: int) -> bytes:
    """The relay's hello: `type` and `transport` are required by the firmware (§1.2);
    `audio_params` is the downlink the relay really sends, with the device's play buffer."""
    return orjson.dumps(
        {
            "type": "hello",
            "transport": "websocket",
            "session_id": session_id,
            "audio_params": {
                "format": downlink.format,
                "sample_rate": downlink.sample_rate,
                "channels": downlink.channels,
                "frame_duration": downlink.frame_duration_ms,
                "play_buffer_duration": play_buffer_ms,
            },
        }
    )


def stt(session_id: str, text: str) -> bytes:
    """ASR result of the user's utterance."""
    return orjson.dumps({"session_id": session_id, "type": "stt", "text": text})


def tts_start(session_id: str) -> bytes:
    """Sent before the first audio frame of an answer."""
    return orjson.dumps({"session_id": session_id, "type": "tts", "state": "start"})


def sentence_start(session_id: str, text: str) -> bytes:
    """Caption of the sentence whose audio follows."""
    return orjson.dumps(
        {"session_id": session_id, "type": "tts", "state": "sentence_start", "text": text}
    )


def tts_stop(session_id: str, *, aborted: bool) -> bytes:
    """End of an answer: after its last frame, or cut off (`is_aborted`)."""
    return orjson.dumps(
        {"session_id": session_id, "type": "tts", "state": "stop", "is_aborted": aborted}
    )


# The firmware's emotion names and the emoji its screens show for them (§2.2).
EMOJI: dict[str, str] = {
    "neutral": "😶",
    "happy": "🙂",
    "laughing": "😆",
    "funny": "😂",
    "sad": "😔",
    "angry": "😠",
    "crying": "😭",
    "loving": "😍",
    "embarrassed": "😳",
    "surprised": "😯",
    "shocked": "😱",
    "thinking": "🤔",
    "winking": "😉",
    "cool": "😎",
    "relaxed": "😌",
    "delicious": "🤤",
    "kissy": "😘",
    "confident": "😏",
    "sleepy": "😴",
    "silly": "😜",
    "confused": "🙄",
}


def llm(session_id: str, emotion: str) -> bytes:
    """The emotion the device shows while an answer plays (§1.5, §2.2); a word the relay
    does not know is passed as it is, with the neutral face as its `text`."""
    return orjson.dumps(
        {
            "session_id": session_id,
            "type": "llm",
            "text": EMOJI.get(emotion, EMOJI["neutral"]),
            "emotion": emotion,
        }
    )


def error(session_id: str | None, code: DeviceError) -> bytes:
    """Answer to a bad text or binary frame; the connection stays open (§1.5 Decision)."""
    msg: dict[str, Any] = {"type": "error", "code": str(code), "message": MESSAGES[code]}
    if session_id is not None:
        msg = {"session_id": session_id, **msg}
    return orjson.dumps(msg)


def pong() -> bytes:
    """Answer to the app-level `ping`."""
    return b'{"type":"pong"}'
