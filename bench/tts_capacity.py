"""TTS capacity: how many spoken answers play at once without an underrun at the device.

One relay per voice (`python -m relay serve --config config.toml`; a cloud ASR that is never
called, so no recogniser loads): `kokoro` (`[tts] provider = "embedded"`, the shipped pool of
one worker on 2 threads), `espeak` (espeak-ng) and `cloud` (`provider = "dashscope"` against
the fake CosyVoice service of tests/asr_tts/fake_dashscope.py in a child process,
bench._fake_tts, streaming a tone at --cloud-pace seconds of synthesis per second of audio:
the relay's own cost of a cloud voice). At each step N devices connect to one relay and, in
the same loop iteration, each sends `listen detect` with a `text_response` (docs/protocol.md
§1.3): a three-sentence answer of about 8 s, Mandarin and English on alternate devices, its
number new in every sentence of every answer, so no FrameCache entry can speak any of it.

Each device keeps the play clock of docs/protocol.md §1.6: it starts when the first frame
arrives, frame k plays at start + k × 60 ms, and a frame that arrives after its play time is
an underrun. N rises until a step has a device with an underrun; the knee is the largest N
without. The steps of the voices take turns (kokoro N1, espeak N1, cloud N1, kokoro N2, …),
so that each sees the same machine. Per step also: first audio (the send to the first
frame), the relay's CPU with its TTS workers and the espeak-ng processes it ran (utime +
stime, children included) per second of audio delivered, and from it the answers one core
keeps playing: seconds of audio per CPU second.

    python -m bench.tts_capacity [--kokoro 1,2,3,4,6] [--espeak 5,10,20,40,80]
        [--cloud 25,50,100,200] [--quick]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench import _fake_tts
from bench._cli import parser, run_main
from bench._common import (
    PYTHON,
    children,
    envelope,
    free_port,
    median,
    percentile,
    progress,
    r,
    spawned_children,
    start_child,
    wait_tcp,
)
from bench._devices import (
    close_in_batches,
    in_batches,
    mac,
    say_hello,
    unlimited_session,
    voice_hello,
)
from bench._peers import device_url, start_relay
from bench.tts_first_audio import ROOMS_EN, ROOMS_ZH, WAKE_WORD, relay_settings

FRAME_S = 0.06
_CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECT_BATCH = 50


def answer(n: int) -> str:
    """The n-th answer: three sentences of about 8 s, each holding n (never cached)."""
    if n % 2:
        room = ROOMS_ZH[n % len(ROOMS_ZH)]
        return (
            f"第{n}条提醒，{room}的灯已经打开了。第{n}条提醒还说，暖气已经设定在二十度。"
            f"这是第{n}条提醒，祝你晚上过得愉快。"
        )
    room = ROOMS_EN[n % len(ROOMS_EN)]
    return (
        f"Reminder number {n}, the {room} lights are on now. Reminder number {n} also says "
        f"the heating is set to twenty degrees. That was reminder number {n}, have a "
        "pleasant evening."
    )


def cpu_with_children(pid: int) -> float:
    """utime + stime of `pid` and of its children it has waited for (espeak-ng), plus its
    live worker processes (Kokoro), in seconds."""
    total = 0.0
    for p in [pid, *spawned_children(pid)]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in f[11:15]) / _CLK_TCK  # utime stime cutime cstime
    return total


@dataclass
class Listener:
    """One device's answer: when it asked, when each frame came, when `tts stop` came."""

    ws: aiohttp.ClientWebSocketResponse
    asked: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    stopped: bool = False

    async def hear(self, text: str, cap_s: float) -> None:
        """Ask for `text` to be spoken and read until `tts stop` (or the cap)."""
        msg = {"type": "listen", "state": "detect", "text": WAKE_WORD, "text_response": text}
        self.asked = time.perf_counter()
        await self.ws.send_str(orjson.dumps(msg).decode())
        try:
            async with asyncio.timeout(cap_s):
                async for got in self.ws:
                    if got.type == WSMsgType.BINARY:
                        self.arrivals.append(time.perf_counter())
                    elif got.type != WSMsgType.TEXT:
                        return
                    elif '"stop"' in got.data:
                        self.stopped = True
                        return
        except TimeoutError:
            return

    def lateness_ms(self) -> list[float]:
        """Each frame's arrival after its play time (negative: in time), on the play clock
        that starts at the first frame."""
        if not self.arrivals:
            return []
        t0 = self.arrivals[0]
        return [(t - t0 - k * FRAME_S) * 1000 for k, t in enumerate(self.arrivals)]


_NUMBERS = itertools.count(1)  # of the answers: each one new


async def step(
    http: aiohttp.ClientSession, port: int, pid: int, n: int, cap_s: float
) -> dict[str, Any]:
    """N devices, all asked at once; the step's figures."""

    async def connect(i: int) -> Listener:
        headers = {"Device-Id": mac(2, 0x4C, 0, 0, i >> 8, i & 255)}
        ws, _ = await say_hello(http, device_url(port), headers, voice_hello())
        return Listener(ws)

    devices: list[Listener] = []
    try:
        await in_batches(connect, n, CONNECT_BATCH, devices)
        cpu0, t0 = cpu_with_children(pid), time.perf_counter()
        texts = [answer(next(_NUMBERS)) for _ in devices]
        await asyncio.gather(*(d.hear(t, cap_s) for d, t in zip(devices, texts, strict=True)))
        wall, cpu = time.perf_counter() - t0, cpu_with_children(pid) - cpu0
    finally:
        await close_in_batches([d.ws for d in devices], CONNECT_BATCH)
    late = [d.lateness_ms() for d in devices]
    # Where each underrun began: the frame index of a device's first late frame.
    seams = sorted(next(k for k, v in enumerate(x) if v > 0) for x in late if any(v > 0 for v in x))
    worst = sorted(max(x, default=float("nan")) for x in late)
    first = sorted((d.arrivals[0] - d.asked) * 1000 for d in devices if d.arrivals)
    audio_s = sum(len(d.arrivals) for d in devices) * FRAME_S
    return {
        "devices": n,
        "devices_with_underrun": sum(1 for x in late if any(v > 0 for v in x)),
        "late_frames": sum(1 for x in late for v in x if v > 0),
        "first_late_frame": seams,
        "worst_lateness_ms": r(worst[-1] if worst else float("nan"), 1),
        "without_audio": sum(1 for d in devices if not d.arrivals),
        "without_stop": sum(1 for d in devices if not d.stopped),
        "first_audio_p50_ms": r(percentile(first, 50), 0),
        "first_audio_p90_ms": r(percentile(first, 90), 0),
        "first_audio_max_ms": r(first[-1] if first else float("nan"), 0),
        "audio_s_per_answer": r(audio_s / n, 2),
        "wall_s": r(wall, 1),
        "cpu_s": r(cpu, 2),
        "cpu_s_per_audio_s": r(cpu / audio_s if audio_s else float("nan"), 4),
        "answers_per_core": r(audio_s / cpu if cpu else float("nan"), 1),
    }


def ok(s: dict[str, Any]) -> bool:
    """A step every device of which heard its whole answer without an underrun."""
    return not (s["devices_with_underrun"] or s["without_audio"] or s["without_stop"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the fake cloud voice and a relay per voice; raise N, the voices in turn."""
    doc = envelope("tts_capacity", vars(args))  # the machine's load as the run starts
    plans = {
        v: [int(x) for x in getattr(args, v).split(",") if x] for v in ("kokoro", "espeak", "cloud")
    }
    plans = {v: ns for v, ns in plans.items() if ns}
    steps: dict[str, list[dict[str, Any]]] = {v: [] for v in plans}
    with children() as started:
        ports, pids = {}, {}
        fake_port = free_port()
        if "cloud" in plans:
            argv = ["-m", "bench._fake_tts", "--port", str(fake_port)]
            fake = start_child("tts-capacity-fake", [PYTHON, *argv, "--pace", str(args.cloud_pace)])
            started.append(fake)
            wait_tcp(fake, fake_port)
        envs = {
            "kokoro": relay_settings("embedded"),
            "espeak": relay_settings("espeak"),
            "cloud": relay_settings("dashscope")
            | {
                "RELAY__TTS__DASHSCOPE__URL": f"ws://127.0.0.1:{fake_port}/api-ws/v1/inference",
                "RELAY__TTS__DASHSCOPE__API_KEY": _fake_tts.API_KEY,
            },
        }
        for v in plans:
            relay, ports[v] = start_relay(started, f"tts-capacity-{v}", envs[v])
            pids[v] = relay.pid
        async with unlimited_session() as http:
            progress("warm-up: one answer per voice and language")
            for v in plans:
                await step(http, ports[v], pids[v], 2, args.cap_s)
            done: set[str] = set()
            for i in range(max(len(ns) for ns in plans.values())):
                for v, ns in plans.items():
                    if v in done or i >= len(ns):
                        continue
                    s = await step(http, ports[v], pids[v], ns[i], args.cap_s)
                    steps[v].append(s)
                    for child in started:
                        child.check_alive()
                    progress(
                        f"{v} N={ns[i]}: {s['devices_with_underrun']} devices with underruns "
                        f"(worst {s['worst_lateness_ms']} ms late), first audio p50 "
                        f"{s['first_audio_p50_ms']} ms, {s['answers_per_core']} answers/core"
                    )
                    if not ok(s):
                        done.add(v)
    doc["steps"] = steps
    doc["knee"] = {
        v: max((s["devices"] for s in ss if ok(s)), default=0) for v, ss in steps.items()
    }
    doc["answers_per_core_median"] = {
        v: r(median([s["answers_per_core"] for s in ss if ok(s)]), 1) for v, ss in steps.items()
    }
    return doc


def table(doc: dict[str, Any]) -> str:
    """Each voice's steps, its knee and answers per core."""
    lines = [
        "tts_capacity: N answers at once; underrun = a frame after its play time (§1.6)",
        f"  {'voice':<8}{'N':>5}{'underrun':>10}{'worst ms':>10}{'first p50':>11}"
        f"{'first p90':>11}{'CPU s/audio s':>15}{'answers/core':>14}",
    ]
    for v, ss in doc["steps"].items():
        for s in ss:
            lines.append(
                f"  {v:<8}{s['devices']:>5}{s['devices_with_underrun']:>10}"
                f"{s['worst_lateness_ms']:>10}{s['first_audio_p50_ms']:>11}"
                f"{s['first_audio_p90_ms']:>11}{s['cpu_s_per_audio_s']:>15}"
                f"{s['answers_per_core']:>14}"
            )
        lines.append(
            f"  {v}: knee N = {doc['knee'][v]} (on {doc['machine']['nproc']} cores), "
            f"answers per core by CPU {doc['answers_per_core_median'][v]}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("tts_capacity", __doc__)
    p.add_argument("--kokoro", default="1,2,3,4,6", help="devices per step ('' skips)")
    p.add_argument("--espeak", default="5,10,20,40,80", help="devices per step ('' skips)")
    p.add_argument("--cloud", default="25,50,100,200", help="devices per step ('' skips)")
    p.add_argument("--cloud-pace", type=float, default=0.2, help="fake s of synthesis per s")
    p.add_argument("--cap-s", type=float, default=120.0, help="longest wait for one answer")
    p.add_argument("--quick", action="store_true", help="two small steps per voice")
    args = p.parse_args(argv)
    if args.quick:
        args.kokoro, args.espeak, args.cloud = "1,2", "5,10", "10,20"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
