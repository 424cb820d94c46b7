"""The device simulator's workload (devsim/conn.py is the device): what a turn sends,
encoded once however many devices send it; what a turn produced (`Trace`, fed relay
messages, no I/O); and the report of one turn."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

from asr_tts.codec import FrameEncoder, pcm_from_wav, resample
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.espeak import EmbeddedTTS
from protocol.audio_format import AudioFormat

if TYPE_CHECKING:
    from devsim.options import Options

RATE, FRAME_MS = 16000, 60  # uplink: 16 kHz mono, 60 ms packets (docs/protocol.md §1.4)
FRAME_S, FRAME_BYTES = FRAME_MS / 1000, RATE * FRAME_MS // 1000 * 2
SILENCE_S = 1.02  # auto/realtime: silence after the speech so the relay's VAD ends it (§1.3)
SESSION_PLACEHOLDER = b"$SESSION_ID"
EXIT_OK, EXIT_CONNECT, EXIT_TIMEOUT, EXIT_FAILED_TURNS, EXIT_INPUT = 0, 1, 2, 3, 4
# What a turn can produce, in its usual order; latencies are ms from the turn's reference.
STAGES = ("stt", "first_event", "tts_start", "first_audio", "abort", "message_end", "tts_stop")
REFERENCE = {"speech": "end of speech", "text": "listen detect sent", "custom": "custom sent"}
Kind = Literal["none", "custom", "text", "speech"]


class InputError(Exception):
    """A `--custom`, `--wav` or `--say` input that cannot be used."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """Uplink packets of one spoken turn, encoded once for any number of devices."""

    packets: tuple[bytes, ...]  # the speech, then SILENCE_S of silence
    speech_packets: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What each turn sends."""

    kind: Kind
    custom: bytes = b""
    text: str = ""
    utterance: Utterance | None = None
    typed: bool = False  # `text` is typed text for the business, not text to speak


def encode_utterance(pcm: Pcm, raw_pcm: bool) -> Utterance:
    """`pcm` at 16 kHz in 60 ms packets (Opus, or raw PCM), then SILENCE_S of silence."""
    samples = resample(pcm, RATE).samples
    if not samples:
        raise InputError("the utterance has no audio")
    samples += bytes(-len(samples) % FRAME_BYTES)
    silence = bytes(round(SILENCE_S / FRAME_S) * FRAME_BYTES)
    # One encoder for speech and silence: Opus state runs across packets as on a device.
    encoder = FrameEncoder(AudioFormat("pcm" if raw_pcm else "opus", RATE, 1, FRAME_MS))
    packets = encoder.encode(Pcm(samples + silence, RATE))
    return Utterance(tuple(packets), len(samples) // FRAME_BYTES)


async def prepare(opts: Options) -> Plan:
    """Read, synthesise and encode the turn's input once (N devices share it)."""
    if opts.custom is not None:
        raw = await _argument_bytes(opts.custom)
        try:
            obj = orjson.loads(raw.replace(SESSION_PLACEHOLDER, b"S"))
        except orjson.JSONDecodeError as exc:
            raise InputError(f"--custom is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InputError("--custom must be a JSON object")
        return Plan("custom", custom=raw.strip())
    if opts.text_response is not None:
        return Plan("text", text=opts.text_response)
    if opts.text is not None:
        return Plan("text", text=opts.text, typed=True)
    if opts.say is not None:
        try:
            pcm = await EmbeddedTTS().synthesize(opts.say, Voice())
        except TTSError as exc:
            raise InputError(f"cannot synthesise --say: {exc}") from exc
    elif opts.wav is not None:
        try:
            pcm = pcm_from_wav(await _argument_bytes("@" + opts.wav))
        except ValueError as exc:
            raise InputError(f"--wav {opts.wav}: {exc}") from exc
    else:
        return Plan("none")
    return Plan("speech", utterance=encode_utterance(pcm, opts.pcm))


async def _argument_bytes(value: str) -> bytes:
    if not value.startswith("@"):
        return value.encode()
    try:
        return await asyncio.to_thread(Path(value[1:]).read_bytes)
    except OSError as exc:
        raise InputError(f"cannot read {value[1:]}: {exc.strerror}") from exc


@dataclass(slots=True)
class Trace:
    """What one turn produced, recorded as it arrives (loop-clock times)."""

    kind: Kind
    t_ref: float | None = None  # end of speech, or when the request went out
    marks: dict[str, float] = field(default_factory=dict)
    stt: str | None = None
    sentences: list[str] = field(default_factory=list)
    frames: int = 0
    audio_bytes: int = 0
    aborted: bool = False
    errors: list[str] = field(default_factory=list)
    ended: bool = False  # the business request's message_end (or error) arrived
    speaking: bool = False  # between tts start and tts stop
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def mark(self, name: str, now: float) -> None:
        """Record the first time `name` happened."""
        self.marks.setdefault(name, now)

    def latencies_ms(self) -> dict[str, float]:
        """Milliseconds from the reference to each stage reached, in STAGES order."""
        if (ref := self.t_ref) is None:
            return {}
        return {k: round((self.marks[k] - ref) * 1000, 1) for k in STAGES if k in self.marks}

    def problems(self) -> list[str]:
        """Error kinds of this turn; empty when it went as a device expects."""
        out = list(self.errors)
        if self.kind == "speech" and "stt" in self.marks and not self.stt:
            out.append("no_speech")
        if not out and self.kind in ("speech", "text") and not self.frames and not self.aborted:
            out.append("no_audio")
        return out


def record(t: Trace, msg: dict[str, Any], now: float) -> None:
    """Update a turn with one relay message (§1.5, §2.4); set `done` when the turn ends."""
    mtype, state = msg.get("type"), msg.get("state")
    if mtype == "stt":
        t.mark("stt", now)
        t.stt = text if isinstance(text := msg.get("text"), str) else ""
    elif mtype == "tts" and state == "start":
        t.mark("tts_start", now)
        t.speaking = True
        t.started.set()
    elif mtype == "tts" and state == "sentence_start":
        t.sentences.append(str(msg.get("text", "")))
    elif mtype == "tts" and state == "stop":
        t.mark("tts_stop", now)
        t.speaking, t.aborted = False, msg.get("is_aborted") is True
        if t.kind != "custom" or t.ended:
            t.done.set()
    elif mtype == "custom":
        t.mark("first_event", now)
        event = _get(_get(msg, "payload"), "business_response")
        if (name := event.get("event")) == "error":
            t.errors.append(f"business:{str(_get(event, 'details').get('code'))[:40]}")
        if name in ("message_end", "error"):
            t.mark("message_end", now)
            t.ended = True
            if t.kind == "custom" and not t.speaking:
                t.done.set()
    elif mtype == "error":
        t.errors.append(f"relay:{str(msg.get('code'))[:40]}")
        t.done.set()


def _get(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


class Printer:
    """One line per message, stamped with seconds since `t0`; downlink audio summarised per
    sentence (one line per frame when verbose). A None stream prints nothing."""

    def __init__(self, stream: TextIO | None, t0: float, verbose: bool = False) -> None:
        self.stream, self.t0, self.verbose = stream, t0, verbose
        self.frame_s = FRAME_S
        self._audio: list[float] = []  # first frame's time, frames, bytes

    def line(self, now: float, text: str) -> None:
        """Print one stamped line, after the summary of the audio received before it."""
        self.flush()
        self._print(now, text)

    def audio(self, now: float, size: int) -> None:
        """One downlink audio frame."""
        if self.stream is None:
            return
        if self.verbose:
            self._print(now, f"< audio frame, {size} bytes")
        elif self._audio:
            self._audio[1:] = [self._audio[1] + 1, self._audio[2] + size]
        else:
            self._audio = [now, 1, size]

    def flush(self) -> None:
        """Print the summary of the audio frames not summarised yet."""
        if self._audio:
            (t, n, size), self._audio = self._audio, []
            self._print(t, f"< audio: {n:.0f} frames, {size:.0f} bytes, {n * self.frame_s:.2f} s")

    def _print(self, now: float, text: str) -> None:
        if self.stream is not None:
            print(f"[{now - self.t0:8.3f}] {text}", file=self.stream, flush=True)


def turn_report(trace: Trace, frame_s: float) -> dict[str, Any]:
    """One turn's outcome, as `--json` prints it."""
    answer = {"sentences": trace.sentences, "frames": trace.frames, "bytes": trace.audio_bytes}
    return {
        "turn": trace.kind,
        "stt": trace.stt,
        "reference": REFERENCE.get(trace.kind),
        "latency_ms": trace.latencies_ms(),
        "answer": answer | {"seconds": round(trace.frames * frame_s, 3)},
        "aborted": trace.aborted,
        "errors": trace.problems(),
        "out": None,
    }


def turn_lines(doc: dict[str, Any]) -> list[str]:
    """One turn's outcome as readable lines."""
    lines = [] if doc["stt"] is None else [f"stt: {doc['stt']!r}"]
    ordered = sorted(doc["latency_ms"].items(), key=lambda kv: kv[1])
    steps = "".join(f" → {stage.replace('_', ' ')} {ms:.0f} ms" for stage, ms in ordered)
    lines.append(f"latency: {doc['reference']}{steps}")
    a, n = doc["answer"], len(doc["answer"]["sentences"])
    if a["frames"] or doc["turn"] != "custom":
        wav = f" → {doc['out']}" if doc["out"] else ""
        sentences = f"{n} sentence{'s' * (n != 1)}"
        lines.append(f"answer: {sentences}, {a['frames']} frames, {a['seconds']} s{wav}")
    if doc["aborted"]:
        lines.append("answer aborted: tts stop with is_aborted")
    lines.append(f"errors: {', '.join(doc['errors']) or 'none'}")
    return lines
