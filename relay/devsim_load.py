"""The device simulator's workload and measurements (relay/devsim_conn.py is the device):
what a turn sends, encoded once however many devices send it; what a turn produced (`Trace`,
fed relay messages, no I/O); the reports of one turn; and the load generator
(`--devices N --turns K`): N devices with distinct ids connect in batches, each runs K turns,
and the run ends with a table and a JSON summary (turns/s, latency percentiles, errors).

Bounded: devsim.MAX_DEVICES devices, devsim.MAX_TURNS turns each, `--timeout` per connection
and per turn, `--max-duration` for the whole run; only `--url` is contacted.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import aiohttp
import orjson

from asr_tts.audio import DownlinkFormat, FrameEncoder, pcm_from_wav, resample
from asr_tts.embedded import EmbeddedTTS
from asr_tts.tts import Pcm, TTSError, Voice

if TYPE_CHECKING:
    from relay.devsim import Options

RATE, FRAME_MS = 16000, 60  # uplink: 16 kHz mono, 60 ms packets (docs/protocol.md §1.4)
FRAME_S, FRAME_BYTES = FRAME_MS / 1000, RATE * FRAME_MS // 1000 * 2
SILENCE_S = 1.02  # auto/realtime: silence after the speech so the relay's VAD ends it (§1.3)
SESSION_PLACEHOLDER = b"$SESSION_ID"
EXIT_OK, EXIT_CONNECT, EXIT_TIMEOUT, EXIT_FAILED_TURNS, EXIT_INPUT = 0, 1, 2, 3, 4
# What a turn can produce, in its usual order; latencies are ms from the turn's reference.
STAGES = ("stt", "first_event", "tts_start", "first_audio", "abort", "message_end", "tts_stop")
REFERENCE = {"speech": "end of speech", "text": "listen detect sent", "custom": "custom sent"}
PROGRESS_S = 1.0
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
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


def encode_utterance(pcm: Pcm, raw_pcm: bool) -> Utterance:
    """`pcm` at 16 kHz in 60 ms packets (Opus, or raw PCM), then SILENCE_S of silence."""
    samples = resample(pcm, RATE).samples
    if not samples:
        raise InputError("the utterance has no audio")
    samples += bytes(-len(samples) % FRAME_BYTES)
    silence = bytes(round(SILENCE_S / FRAME_S) * FRAME_BYTES)
    # One encoder for speech and silence: Opus state runs across packets as on a device.
    encoder = FrameEncoder(DownlinkFormat("pcm" if raw_pcm else "opus", RATE, 1, FRAME_MS))
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


@dataclass(slots=True)
class Stats:
    """Counts and latencies of a load run, updated by every device task."""

    devices: int
    turns_per_device: int
    connected: int = 0
    ok: int = 0
    failed: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def add_turn(self, trace: Trace) -> None:
        """A finished turn: its latencies when it went well, its error kinds otherwise."""
        if problems := trace.problems():
            self.turn_failed(problems)
            return
        self.ok += 1
        for stage, ms in trace.latencies_ms().items():
            self.latencies.setdefault(stage, []).append(ms)

    def turn_failed(self, kinds: list[str]) -> None:
        """A turn that failed, with each of its error kinds."""
        self.failed += 1
        self.errors.update(kinds)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        """The JSON summary of the run."""
        wanted = self.devices * self.turns_per_device
        stages = [s for s in ("connect", *STAGES) if s in self.latencies]
        return {
            "devices": self.devices,
            "connected": self.connected,
            "turns_requested": wanted,
            "turns": self.ok,
            "failed": self.failed,
            "not_run": wanted - self.ok - self.failed,
            "elapsed_s": round(elapsed_s, 3),
            "turns_per_s": round(self.ok / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": {s: describe(self.latencies[s]) for s in stages},
            "errors": dict(sorted(self.errors.items())),
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def describe(values: list[float]) -> dict[str, float]:
    """Count, p50, p90, p99 and max of latency samples (ms)."""
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    out |= {name: round(percentile(ordered, q), 1) for name, q in PERCENTILES}
    return out | {"max": round(ordered[-1], 1)}


def random_mac() -> str:
    """A random locally administered MAC address, the form firmware sends as Device-Id."""
    return ":".join(f"{b:02X}" for b in b"\x02" + secrets.token_bytes(5))


def device_ids(base: str, n: int) -> list[str]:
    """`n` distinct device ids: a MAC counts up from `base`, any other id gets a suffix."""
    base = base or random_mac()
    if not _MAC.match(base):
        return [f"{base}-{i}" for i in range(n)]
    start = int(re.sub(r"[:-]", "", base), 16)
    digits = [f"{(start + i) % (1 << 48):012X}" for i in range(n)]
    return [":".join(d[j : j + 2] for j in range(0, 12, 2)) for d in digits]


def table(s: dict[str, Any]) -> list[str]:
    """A load summary as readable lines."""
    lines = [
        f"devices {s['devices']} (connected {s['connected']}) · turns {s['turns']} ok, "
        f"{s['failed']} failed, {s['not_run']} not run of {s['turns_requested']} · "
        f"{s['elapsed_s']:.1f} s · {s['turns_per_s']:.2f} turns/s",
        f"{'stage (ms)':<12} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}",
    ]
    for stage, d in s["latency_ms"].items():
        cells = " ".join(f"{d[k]:>8.1f}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{stage:<12} {d['n']:>6.0f} {cells}")
    errors = ", ".join(f"{k} ×{v}" for k, v in s["errors"].items())
    return [*lines, f"errors: {errors or 'none'}"]


async def run_load(opts: Options, plan: Plan, out: TextIO, err: TextIO) -> int:
    """Run the load; 0 when every turn succeeded, 3 when some did not, 2 past max duration."""
    stats = Stats(opts.devices, opts.turns)
    loop = asyncio.get_running_loop()
    start = loop.time()
    code = EXIT_OK
    # One connection per device: no pool limit, nothing kept alive between requests.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        progress = loop.create_task(_progress(stats, err, start))
        try:
            async with asyncio.timeout(opts.max_duration), asyncio.TaskGroup() as tg:
                for i, device_id in enumerate(device_ids(opts.device_id, opts.devices)):
                    delay = i // opts.ramp_batch * opts.ramp_interval
                    tg.create_task(_device(session, opts, plan, device_id, delay, stats))
        except TimeoutError:
            stats.errors["max_duration"] += 1
            code = EXIT_TIMEOUT
        finally:
            progress.cancel()
            await asyncio.wait([progress])
    summary = stats.summary(loop.time() - start)
    _progress_line(stats, err, start, end="\n")
    print("\n".join(table(summary)), file=err if opts.json else out)
    print(orjson.dumps(summary).decode(), file=out, flush=True)
    if code == EXIT_OK and (stats.failed or stats.errors or summary["not_run"]):
        code = EXIT_FAILED_TURNS
    return code


async def _device(
    session: aiohttp.ClientSession,
    opts: Options,
    plan: Plan,
    device_id: str,
    delay: float,
    stats: Stats,
) -> None:
    from relay.devsim_conn import HandshakeFailed, connect  # which imports this module

    await asyncio.sleep(delay)  # the ramp: batches of --ramp-batch every --ramp-interval
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(opts.timeout):
            conn = await connect(session, opts, device_id, Printer(None, t0), explain=False)
    except HandshakeFailed as exc:
        stats.errors[exc.kind] += 1
        return
    except TimeoutError:
        stats.errors["connect_timeout"] += 1
        return
    except (aiohttp.ClientError, OSError):  # dropped during the hello exchange
        stats.errors["connect"] += 1
        return
    stats.connected += 1
    stats.latencies.setdefault("connect", []).append((loop.time() - t0) * 1000)
    try:
        for _ in range(opts.turns):
            try:
                async with asyncio.timeout(opts.timeout):
                    trace = await conn.turn(plan, opts)
            except TimeoutError:
                stats.turn_failed(["timeout"])
                break  # its answer may still be arriving: this device stops here
            except (aiohttp.ClientError, OSError):
                stats.turn_failed(["send_failed"])
                break
            stats.add_turn(trace)
            if "closed" in trace.errors:
                break
    finally:
        await conn.close()


async def _progress(stats: Stats, err: TextIO, start: float) -> None:
    end = "\r" if err.isatty() else "\n"
    while True:
        await asyncio.sleep(PROGRESS_S)
        _progress_line(stats, err, start, end)


def _progress_line(stats: Stats, err: TextIO, start: float, end: str) -> None:
    elapsed = asyncio.get_running_loop().time() - start
    print(
        f"devsim: {elapsed:6.1f} s  connected {stats.connected}/{stats.devices}  "
        f"turns {stats.ok + stats.failed}/{stats.devices * stats.turns_per_device}  "
        f"errors {sum(stats.errors.values())}",
        file=err,
        end=end,
        flush=True,
    )
