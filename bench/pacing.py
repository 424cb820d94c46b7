"""Downlink pacing and the play clock with many sessions speaking at once (docs/protocol.md
§1.6).

N devices (default 500) connect to one relay process (`python -m relay serve --config
config.toml`, a subprocess) with Protocol-Version 2, whose audio frame header carries the
relay's send time in ms (§1.4), and all ask for speech in the same loop iteration: `listen
detect` with a `text_response` of a few sentences (§1.3). Each device models its playback
clock: it starts at the first frame, each 60 ms frame adds 60 ms, and a frame that arrives
after the queue ran dry restarts it (an underrun, audible as a gap). Per frame it records

- lead: audio queued beyond now once the frame is queued; the relay may run ahead by at
  most play_buffer_duration (1000 ms) + one frame;
- send-time jitter: |interval between consecutive frames - 60 ms| on the relay's clock (the
  v2 header timestamps) once the initial lead is filled, and the lateness of those frames
  against the ideal schedule (first frame + k x 60 ms - play_buffer_duration);
- on the relay's clock too: the lead (which the pacer should bound by the same 1060 ms) and
  the burst spread (how long the relay took to write the first 17 frames, sent at once);
- the jitter again from frame 34 on (one second after the lead was filled), which leaves out
  the frames delayed by every device's 17-frame burst going out at the same moment.

Per answer, on the same playback clock (the play clock of §1.6):

- `tts stop` lateness: the stop's arrival minus the end of playback. The relay sends it once
  the last frame has played, plus half a frame; early (negative) means a client that flushes
  its queue on `tts stop` loses the rest of the answer: the benchmark counts those answers
  and adds up the audio lost;
- caption skew: each `sentence_start`'s arrival minus the play start of its sentence's first
  frame. Which frame starts each sentence comes from cutting and encoding the text as the
  relay does: the same Speaker, espeak-ng (deterministic) and downlink format, with the
  relay's configuration (`config.toml` and the same overrides). An answer whose frame count or
  captions differ from that plan is counted and left out of the skew. (An answer's `llm`
  emotion is held the same way; a `text_response` carries none, so it is not measured.)
- the first frame's delay in reading: how much later than the device's fastest frame (relay
  write stamp to arrival) the first one was received. The playback clock starts that much
  late, and the stop lateness and caption skews move with it; on loopback it is the load
  generator's own delay, so the stop lateness is also given with it taken out (diagnostics).

Every device reads its answer up to `tts stop`, about one second after its last frame
arrives (`--cap-s` bounds the wait); an answer without its `tts stop` counts as outside the
stop goal. The baseline, in the same run: one device alone speaking the same text. The
sentences are spoken once before the timed phases, so every device is served from the TTS
frame cache and the benchmark measures pacing, not espeak-ng throughput.

Goals, on the loaded phase's medians over repetitions: lead at most play_buffer_duration + one
frame (1060 ms); send-time jitter p99 under 15 ms; `tts stop` 0 to 60 ms after the play end
for at least 99% of the answers; caption |skew| p99 at most one frame (60 ms).

    python -m bench.pacing [--devices 500] [--repeat 3]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from asr_tts.codec import FrameEncoder
from asr_tts.tts.espeak import EmbeddedTTS
from asr_tts.tts.speaker import Speaker
from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import (
    RESULTS,
    ROOT,
    Child,
    children,
    envelope,
    median,
    medians,
    percentile,
    progress,
    r,
    self_cpu_seconds,
)
from bench._devices import in_batches, mac, say_hello, unlimited_session, voice_hello
from bench._peers import device_url, relay_env, start_relay
from bench._pyspy import folded_top, start_py_spy
from bench._sched import process_sched
from protocol.audio_format import AudioFormat
from protocol.business import Speak
from relay.config.load import load
from relay.device.turn import voice_of

FRAME_MS = 60.0
PLAY_BUFFER_MS = 1000.0
GOAL_LEAD_MS = PLAY_BUFFER_MS + FRAME_MS
GOAL_JITTER_P99_MS = 15.0
# The play clock (docs/protocol.md §1.6): `tts stop` within [0, +1 frame] of the play end and
# each caption within ±1 frame of its sentence's play start, for 99% of them.
GOAL_STOP_MS = (0.0, FRAME_MS)
GOAL_STOP_SHARE = 99.0
GOAL_CAPTION_SKEW_P99_MS = FRAME_MS
CONNECT_BATCH = 100
TEXT = (
    "Good morning, here is the weather for today. It will be sunny with a light breeze. "
    "The temperature will reach twenty degrees in the afternoon. Have a nice day."
)
HELLO = voice_hello(2, play_buffer_duration=int(PLAY_BUFFER_MS))
SAMPLES = RESULTS / "pacing-relay.folded"
_V2 = struct.Struct(">HHIII")  # version, type, reserved, timestamp_ms, payload_size
Plan = list[tuple[str, int]]  # (caption, frames) of each sentence, in order


@dataclass
class Device:
    """One device: its socket and what it received during a phase."""

    ws: aiohttp.ClientWebSocketResponse
    session_id: str
    arrivals: list[float] = field(default_factory=list)  # perf_counter, per audio frame
    stamps: list[int] = field(default_factory=list)  # relay send time (v2 header), ms
    asked_t: float = 0.0
    stop_t: float = 0.0
    frames_after_stop: int = 0
    captions: list[tuple[float, str]] = field(default_factory=list)  # (arrival, text)


async def connect(http: aiohttp.ClientSession, url: str, rep: int, idx: int) -> Device:
    """Handshake with Protocol-Version 2 and hello (§1.1, §1.2)."""
    device = mac(0x02, 0x5A, rep & 255, 0, (idx >> 8) & 255, idx & 255)
    headers = {"Device-Id": device, "Client-Id": f"pace-{idx}", "Protocol-Version": "2"}
    ws, hello = await say_hello(http, url, headers, HELLO)
    return Device(ws, hello["session_id"])


async def listen(dev: Device, cap_s: float) -> None:
    """Read until `tts stop`, recording every audio frame's arrival and header timestamp."""
    async with asyncio.timeout(cap_s):
        async for msg in dev.ws:
            now = time.perf_counter()
            if msg.type == WSMsgType.BINARY:
                _v, kind, _res, ts, _size = _V2.unpack_from(msg.data)
                if kind == 0:
                    if dev.stop_t:
                        dev.frames_after_stop += 1
                    dev.arrivals.append(now)
                    dev.stamps.append(ts)
                continue
            if msg.type != WSMsgType.TEXT:
                break
            m = orjson.loads(msg.data)
            if m.get("type") != "tts":
                continue
            state = m.get("state")
            if state == "sentence_start":
                dev.captions.append((now, m.get("text", "")))
            elif state == "stop":
                dev.stop_t = now
                return


def ask(dev: Device) -> bytes:
    """The wake-word message asking the relay to speak TEXT (§1.3)."""
    return orjson.dumps(
        {
            "session_id": dev.session_id,
            "type": "listen",
            "state": "detect",
            "text": "hi",
            "text_response": TEXT,
        }
    )


async def sentence_plan(env: Mapping[str, str]) -> Plan:
    """(caption, frames) of each sentence of TEXT as the relay cuts and encodes it: its
    Speaker with the embedded voice (espeak-ng is deterministic), its first-segment cut and the
    downlink it declares to an Opus device, read from the configuration the relay runs with
    (`config.toml` and `env`)."""
    tts = load(ROOT / "config.toml", {**os.environ, **env}).tts
    if tts.provider != "embedded" or tts.frame_duration_ms != FRAME_MS:
        raise RuntimeError("the caption plan assumes the embedded TTS and 60 ms frames")
    speaker = Speaker(
        {"embedded": EmbeddedTTS()}, "embedded", first_max_chars=tts.first_segment_chars or None
    )
    encoder = FrameEncoder(AudioFormat("opus", tts.downlink_sample_rate, 1, tts.frame_duration_ms))
    voice = voice_of(Speak(answer=TEXT))  # a text_response speaks with the default voice
    return [(text, len(f)) async for text, f in speaker.sentences(TEXT, voice, encoder)]


def analyse(dev: Device, plan: Plan) -> dict[str, Any]:
    """Lead, underruns, jitter and lateness of one device's frames; its `tts stop` lateness
    and caption skews against its playback clock (docs/protocol.md §1.6)."""
    frame_s = FRAME_MS / 1000
    play_end = 0.0
    leads, underruns, starts = [], 0, []
    for k, t in enumerate(dev.arrivals):
        if k and t > play_end:
            underruns += 1
        starts.append(max(play_end, t))  # when this frame starts playing
        play_end = starts[-1] + frame_s
        leads.append((play_end - t) * 1000)
    stop_late = (dev.stop_t - play_end) * 1000 if dev.stop_t and starts else None
    # Each caption against the play start of its sentence's first frame, when the answer is
    # the one planned (the same captions, the same number of frames).
    skews: list[float] = []
    planned = len(starts) == sum(n for _, n in plan) and [text for _, text in dev.captions] == [
        text for text, _ in plan
    ]
    if planned:
        first = 0
        for (arrival, _text), (_, n) in zip(dev.captions, plan, strict=True):
            skews.append((arrival - starts[first]) * 1000)
            first += n
    # On the relay's clock: frames 0..burst-1 go at once (the lead fills), then one per 60 ms.
    burst = int(PLAY_BUFFER_MS // FRAME_MS) + 1
    s = dev.stamps
    relay_end, relay_leads = 0.0, []
    for ts in s:  # the same playback clock on the relay's send times
        relay_end = max(relay_end, ts) + FRAME_MS
        relay_leads.append(relay_end - ts)
    jitter = [abs(s[k] - s[k - 1] - FRAME_MS) for k in range(burst + 1, len(s))]
    # The same once the frames right after the burst are out (steady state): from frame 34,
    # one second after the lead was filled.
    steady = [abs(s[k] - s[k - 1] - FRAME_MS) for k in range(2 * burst, len(s))]
    # Lateness once the lead is filled: the burst frames may go in any order of time.
    late = [s[k] - (s[0] + k * FRAME_MS - PLAY_BUFFER_MS) for k in range(burst, len(s))]
    arr = dev.arrivals
    arrival_jitter = [
        abs((arr[k] - arr[k - 1]) * 1000 - FRAME_MS) for k in range(burst + 1, len(arr))
    ]
    # How much later than this device's fastest frame (relay write stamp to arrival, 1 ms
    # stamps) its first frame was received: its playback clock, and with it the stop
    # lateness and the caption skews, start that much late. On loopback that is the load
    # generator's own delay in reading, which a real device does not share (diagnostics).
    trip = [a * 1000 - ts for a, ts in zip(arr, s, strict=True)]
    first_delay = trip[0] - min(trip) if trip else float("nan")
    return {
        "frames": len(s),
        "max_lead_ms": max(leads, default=float("nan")),
        "leads": leads,
        "relay_lead_max_ms": max(relay_leads, default=float("nan")),
        "underruns": underruns,
        "jitter": jitter,
        "steady_jitter": steady,
        "arrival_jitter": arrival_jitter,
        "late": late,
        # how long the relay took to write the burst that fills the lead, and how far the
        # lead on its own clock went past play_buffer_duration + one frame
        "burst_spread_ms": s[min(burst, len(s)) - 1] - s[0] if s else 0,
        "relay_excess_lead_ms": max(0.0, max(relay_leads, default=0.0) - GOAL_LEAD_MS),
        "ask_to_first_frame_ms": (arr[0] - dev.asked_t) * 1000 if arr else float("nan"),
        "frames_after_stop": dev.frames_after_stop,
        "sentence_starts": len(dev.captions),
        "stop_lateness_ms": stop_late,
        "first_frame_delay_ms": first_delay,
        "planned": planned,
        "caption_skews": skews,
    }


async def phase(
    http: aiohttp.ClientSession,
    url: str,
    relay: Child,
    rep: int,
    n: int,
    cap_s: float,
    plan: Plan,
    py_spy: str | None = None,
) -> dict[str, Any]:
    """Connect `n` devices, ask them all to speak at once, analyse what they received up to
    `tts stop`; with `py_spy`, sample the relay's stacks meanwhile (diagnostics)."""
    devices = await in_batches(lambda i: connect(http, url, rep, i), n, CONNECT_BATCH)
    try:
        readers = [asyncio.ensure_future(listen(d, cap_s)) for d in devices]
        spy = None
        if py_spy is not None:
            spy = start_py_spy(py_spy, "pacing-py-spy", relay.pid, SAMPLES, duration_s=9)
        await asyncio.sleep(0.2 if spy is None else 0.5)
        (relay_cpu0, wait0), gen_cpu0 = process_sched(relay.pid), self_cpu_seconds()
        gen_wait0 = process_sched(os.getpid())[1]
        t0 = time.perf_counter()
        for d in devices:  # all in one loop iteration: the relay sees them at once
            d.asked_t = time.perf_counter()
            await d.ws.send_frame(ask(d), WSMsgType.TEXT)
        results = await asyncio.gather(*readers, return_exceptions=True)
        wall = time.perf_counter() - t0
        relay_cpu1, wait1 = process_sched(relay.pid)
        relay_cpu, relay_wait = relay_cpu1 - relay_cpu0, wait1 - wait0
        gen_cpu = self_cpu_seconds() - gen_cpu0
        gen_wait = process_sched(os.getpid())[1] - gen_wait0
        relay.check_alive()
    finally:
        await asyncio.gather(*(d.ws.close() for d in devices), return_exceptions=True)
    timeouts = sum(1 for x in results if isinstance(x, BaseException))
    per = [analyse(d, plan) for d in devices if d.arrivals]
    leads = sorted(x for p in per for x in p["leads"])
    jitter = sorted(x for p in per for x in p["jitter"])
    steady = sorted(x for p in per for x in p["steady_jitter"])
    arrival_jitter = sorted(x for p in per for x in p["arrival_jitter"])
    late = sorted(x for p in per for x in p["late"])
    firsts = sorted(p["ask_to_first_frame_ms"] for p in per)
    frames = sum(p["frames"] for p in per)
    # One `tts stop` per answer, against its play end; lost = audio still queued at the stop,
    # which a client flushing on `tts stop` never plays (docs/protocol.md §1.6).
    stops = sorted(p["stop_lateness_ms"] for p in per if p["stop_lateness_ms"] is not None)
    lo, hi = GOAL_STOP_MS
    lost = [-x for x in stops if x < 0]
    # The same with the first frame's delay in reading taken out (no underrun: the play end
    # moves with the first frame); diagnostics, not the goal.
    stops_adj = sorted(
        p["stop_lateness_ms"] + p["first_frame_delay_ms"]
        for p in per
        if p["stop_lateness_ms"] is not None and not p["underruns"]
    )
    first_delays = sorted(p["first_frame_delay_ms"] for p in per)
    skews = sorted(x for p in per for x in p["caption_skews"])
    abs_skews = sorted(abs(x) for x in skews)
    return {
        "devices": n,
        "devices_with_audio": len(per),
        "timeouts": timeouts,
        "frames": frames,
        "frames_per_device_median": median([p["frames"] for p in per]),
        "wall_s": r(wall, 2),
        "lead_max_ms": r(leads[-1] if leads else float("nan"), 1),
        "lead_p99_ms": r(percentile(leads, 99), 1),
        "lead_p50_ms": r(percentile(leads, 50), 1),
        "relay_clock_lead_max_ms": r(max((p["relay_lead_max_ms"] for p in per), default=0.0), 1),
        "devices_over_goal_lead": sum(1 for p in per if p["max_lead_ms"] > GOAL_LEAD_MS),
        "underruns": sum(p["underruns"] for p in per),
        "devices_with_underruns": sum(1 for p in per if p["underruns"]),
        "jitter_p50_ms": r(percentile(jitter, 50), 1),
        "jitter_p99_ms": r(percentile(jitter, 99), 1),
        "jitter_max_ms": r(jitter[-1] if jitter else float("nan"), 1),
        "steady_jitter_p99_ms": r(percentile(steady, 99), 1),
        "steady_jitter_max_ms": r(steady[-1] if steady else float("nan"), 1),
        "arrival_jitter_p99_ms": r(percentile(arrival_jitter, 99), 1),
        "burst_spread_p50_ms": r(median([p["burst_spread_ms"] for p in per]), 1),
        "burst_spread_max_ms": r(max((p["burst_spread_ms"] for p in per), default=0.0), 1),
        "relay_excess_lead_max_ms": r(
            max((p["relay_excess_lead_ms"] for p in per), default=0.0), 1
        ),
        "lateness_p50_ms": r(percentile(late, 50), 1),
        "lateness_p99_ms": r(percentile(late, 99), 1),
        "lateness_max_ms": r(late[-1] if late else float("nan"), 1),
        "ask_to_first_frame_p50_ms": r(percentile(firsts, 50), 1),
        "ask_to_first_frame_p99_ms": r(percentile(firsts, 99), 1),
        "frames_after_tts_stop": sum(p["frames_after_stop"] for p in per),
        "stops": len(stops),
        "stop_lateness_p1_ms": r(percentile(stops, 1), 1),
        "stop_lateness_p50_ms": r(percentile(stops, 50), 1),
        "stop_lateness_p99_ms": r(percentile(stops, 99), 1),
        "stop_lateness_min_ms": r(stops[0] if stops else float("nan"), 1),
        "stop_lateness_max_ms": r(stops[-1] if stops else float("nan"), 1),
        "stops_early": len(lost),
        # of the answers asked for: one without its `tts stop` is not within the goal
        "stops_in_goal_pct": r(100 * sum(1 for x in stops if lo <= x <= hi) / n, 2),
        "audio_lost_total_ms": r(sum(lost), 1),
        "audio_lost_max_ms": r(max(lost, default=0.0), 1),
        "first_frame_delay_p50_ms": r(percentile(first_delays, 50), 1),
        "first_frame_delay_p99_ms": r(percentile(first_delays, 99), 1),
        "first_frame_delay_max_ms": r(first_delays[-1] if first_delays else float("nan"), 1),
        "stop_lateness_less_first_delay_min_ms": r(stops_adj[0] if stops_adj else float("nan"), 1),
        "stops_early_less_first_delay": sum(1 for x in stops_adj if x < 0),
        "captions": len(skews),
        "answers_off_plan": sum(1 for p in per if not p["planned"]),
        "caption_skew_min_ms": r(skews[0] if skews else float("nan"), 1),
        "caption_skew_p1_ms": r(percentile(skews, 1), 1),
        "caption_skew_p50_ms": r(percentile(skews, 50), 1),
        "caption_skew_p99_ms": r(percentile(skews, 99), 1),
        "caption_skew_max_ms": r(skews[-1] if skews else float("nan"), 1),
        "caption_abs_skew_p99_ms": r(percentile(abs_skews, 99), 1),
        "caption_abs_skew_max_ms": r(abs_skews[-1] if abs_skews else float("nan"), 1),
        "relay_cpu_us_per_frame": r(relay_cpu * 1e6 / frames if frames else float("nan"), 1),
        "relay_cpu_cores": r(relay_cpu / wall, 2),
        # Time the relay's threads were ready to run but waited for a CPU, per second.
        "relay_runqueue_wait": r(relay_wait / wall, 3),
        "loadgen_cpu_cores": r(gen_cpu / wall, 2),
        # The same for the load generator: a device whose reader waits records its frames late.
        "loadgen_runqueue_wait": r(gen_wait / wall, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the relay, warm the TTS cache, then baseline and loaded phases per repetition."""
    reps: list[dict[str, Any]] = []
    env = relay_env(idle_timeout_s="600")
    plan = await sentence_plan(env)
    progress(f"the relay speaks {len(plan)} sentences, {sum(n for _, n in plan)} frames")
    with children() as started:
        relay, port = start_relay(started, "pacing-relay", env)
        url = device_url(port)
        async with unlimited_session() as http:
            progress("warming the TTS frame cache: one device speaks the text once")
            await phase(http, url, relay, 250, 1, args.cap_s, plan)
            for i in range(args.repeat):
                got: dict[str, Any] = {}
                for name, n in (("alone", 1), ("loaded", args.devices)):
                    progress(f"rep {i + 1}/{args.repeat}: {name}, {n} device(s) speaking at once")
                    spy = args.py_spy if name == "loaded" and i == 0 else None
                    got[name] = await phase(
                        http, url, relay, 2 * i + (name == "loaded"), n, args.cap_s, plan, spy
                    )
                    g = got[name]
                    progress(
                        f"  lead max {g['lead_max_ms']:.0f} ms p99 {g['lead_p99_ms']:.0f}, jitter "
                        f"p99 {g['jitter_p99_ms']:.1f} ms, lateness p99 {g['lateness_p99_ms']:.0f} "
                        f"ms, underruns {g['underruns']}, relay {g['relay_cpu_cores']:.2f} cores, "
                        f"run-queue wait {g['relay_runqueue_wait']:.3f} (load generator "
                        f"{g['loadgen_runqueue_wait']:.3f})"
                    )
                    progress(
                        f"  tts stop late p50 {g['stop_lateness_p50_ms']:.0f} ms p99 "
                        f"{g['stop_lateness_p99_ms']:.0f} (min {g['stop_lateness_min_ms']:.0f}, "
                        f"{g['stops_early']} early of {g['stops']}), caption skew p50 "
                        f"{g['caption_skew_p50_ms']:.0f} ms |p99| "
                        f"{g['caption_abs_skew_p99_ms']:.0f}, timeouts {g['timeouts']}"
                    )
                reps.append(got)
    med = {name: medians([rep[name] for rep in reps]) for name in ("alone", "loaded")}
    loaded = med["loaded"]
    return envelope("pacing", vars(args)) | {
        "text": TEXT,
        "sentence_frames": plan,
        "repetitions": reps,
        "median": med,
        "relay_samples_loaded": folded_top(SAMPLES) if args.py_spy and SAMPLES.exists() else None,
        "goals": [
            {
                "goal": "lead never above play_buffer_duration + one frame "
                f"({GOAL_LEAD_MS:.0f} ms)",
                "value": loaded["lead_max_ms"],
                "pass": loaded["lead_max_ms"] <= GOAL_LEAD_MS,
            },
            {
                "goal": f"send-time jitter p99 < {GOAL_JITTER_P99_MS:.0f} ms",
                "value": loaded["jitter_p99_ms"],
                "pass": loaded["jitter_p99_ms"] < GOAL_JITTER_P99_MS,
            },
            {
                "goal": f"tts stop {GOAL_STOP_MS[0]:.0f} to +{GOAL_STOP_MS[1]:.0f} ms after the "
                f"play end for >= {GOAL_STOP_SHARE:.0f}% of answers (value: % within; early "
                f"stops {loaded['stops_early']:.0f}, p99 {loaded['stop_lateness_p99_ms']} ms)",
                "value": loaded["stops_in_goal_pct"],
                "pass": loaded["stops_in_goal_pct"] >= GOAL_STOP_SHARE,
            },
            {
                "goal": f"caption |skew| p99 <= {GOAL_CAPTION_SKEW_P99_MS:.0f} ms "
                f"({loaded['answers_off_plan']:.0f} answers off the plan)",
                "value": loaded["caption_abs_skew_p99_ms"],
                "pass": loaded["caption_abs_skew_p99_ms"] <= GOAL_CAPTION_SKEW_P99_MS
                and loaded["answers_off_plan"] == 0,
            },
        ],
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    keys = (
        ("frames", "frames", 0),
        ("lead_max_ms", "lead max ms", 1),
        ("lead_p99_ms", "lead p99 ms", 1),
        ("relay_clock_lead_max_ms", "lead max, relay clock", 1),
        ("jitter_p50_ms", "jitter p50 ms", 1),
        ("jitter_p99_ms", "jitter p99 ms", 1),
        ("jitter_max_ms", "jitter max ms", 1),
        ("steady_jitter_p99_ms", "jitter p99 from frame 34", 1),
        ("steady_jitter_max_ms", "jitter max from frame 34", 1),
        ("arrival_jitter_p99_ms", "arrival jitter p99", 1),
        ("burst_spread_p50_ms", "burst spread p50 ms", 1),
        ("burst_spread_max_ms", "burst spread max ms", 1),
        ("lateness_p99_ms", "lateness p99 ms", 1),
        ("lateness_max_ms", "lateness max ms", 1),
        ("underruns", "underruns", 0),
        ("ask_to_first_frame_p50_ms", "ask->1st frame p50", 1),
        ("ask_to_first_frame_p99_ms", "ask->1st frame p99", 1),
        ("frames_after_tts_stop", "frames after stop", 0),
        ("stop_lateness_p1_ms", "stop late p1 ms", 1),
        ("stop_lateness_p50_ms", "stop late p50 ms", 1),
        ("stop_lateness_p99_ms", "stop late p99 ms", 1),
        ("stop_lateness_min_ms", "stop late min ms", 1),
        ("stop_lateness_max_ms", "stop late max ms", 1),
        ("stops_early", "stops early", 0),
        ("stops_in_goal_pct", "stops in [0, 60] %", 1),
        ("audio_lost_total_ms", "audio lost, total ms", 1),
        ("audio_lost_max_ms", "audio lost, max ms", 1),
        ("first_frame_delay_p50_ms", "1st frame delay p50", 1),
        ("first_frame_delay_max_ms", "1st frame delay max", 1),
        ("stop_lateness_less_first_delay_min_ms", "stop late min, less it", 1),
        ("stops_early_less_first_delay", "stops early, less it", 0),
        ("captions", "captions", 0),
        ("answers_off_plan", "answers off plan", 0),
        ("caption_skew_min_ms", "caption skew min ms", 1),
        ("caption_skew_p50_ms", "caption skew p50 ms", 1),
        ("caption_skew_p99_ms", "caption skew p99 ms", 1),
        ("caption_skew_max_ms", "caption skew max ms", 1),
        ("caption_abs_skew_p99_ms", "caption |skew| p99", 1),
        ("relay_cpu_us_per_frame", "relay CPU us/frame", 1),
        ("relay_cpu_cores", "relay cores", 2),
        ("loadgen_cpu_cores", "loadgen cores", 2),
        ("loadgen_runqueue_wait", "loadgen run-queue wait", 3),
        ("relay_runqueue_wait", "relay run-queue wait", 3),
    )
    med = doc["median"]
    lines = [
        f"pacing: median of {len(doc['repetitions'])} repetitions",
        f"  {'':<22}{'alone':>10}{'loaded':>10}  ({doc['params']['devices']} devices)",
    ]
    for key, label, digits in keys:
        a, b = med["alone"][key], med["loaded"][key]
        lines.append(f"  {label:<22}{a:>10.{digits}f}{b:>10.{digits}f}")
    lines += goal_lines(doc["goals"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("pacing", __doc__)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cap-s", type=float, default=60.0, help="cap on one phase's speech")
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        help="diagnostics: py-spy binary; samples the relay during the first loaded phase",
    )
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
