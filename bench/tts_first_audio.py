"""First downlink audio of a spoken answer: Kokoro against espeak-ng, uncached and cached.

Two relays run side by side (`python -m relay serve --config config.toml`): one speaks with
Kokoro (`[tts] provider = "embedded"`, the shipped default), under bench._probe with its loop
ticker; the other with espeak-ng. Each warms up as `relay serve` does; neither loads a
recogniser (a cloud ASR that is never called), so that nothing else competes for the cores.
One device per relay sends `listen detect` with a `text_response` (docs/protocol.md §1.3), a
10-word answer in Mandarin or English, new in every trial (nothing cached can speak it), then
the same answer again (spoken from the FrameCache). Measured: from the send to the first
binary frame; every answer is heard to its `tts stop` before the next. Trials alternate
language and engine, so both engines see the same noise. The first answer in each language
after the start is reported on its own (the cost a warm-up leaves: Mandarin's dictionaries
load at the first Mandarin call).

Also: the Kokoro relay's loop, its worst and p99 pause over all the answers (a task waking
every 5 ms), beside the espeak-ng relay's (what the machine's own scheduling costs); the
Kokoro worker's RSS after the first answers and after the trials, and its
peak (VmHWM) after a long answer (a 400-character Mandarin run without a stop, then 80 English
words without one) spoken for --long-s seconds, then aborted.

    python -m bench.tts_first_audio [--trials 10] [--long-s 20]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import (
    RESULTS,
    children,
    envelope,
    median,
    percentile,
    probe_report,
    progress,
    r,
    rss_kib,
    spawned_children,
)
from bench._devices import mac, say_hello, voice_hello
from bench._peers import device_url, relay_env, start_relay

ENGINES = ("kokoro", "espeak")
LANGS = ("zh", "en")
ROOMS_EN = (
    "kitchen", "bedroom", "hallway", "garden", "office", "bathroom", "garage", "study",
    "porch", "attic", "basement", "nursery", "pantry", "balcony", "cellar", "library",
    "laundry", "playroom", "lobby", "studio",
)  # fmt: skip
ROOMS_ZH = (
    "厨房", "卧室", "客厅", "书房", "阳台", "走廊", "车库", "浴室", "餐厅", "花园",
    "阁楼", "地下室", "儿童房", "门口", "楼梯", "衣帽间", "洗衣房", "办公室", "游戏室", "健身房",
)  # fmt: skip
LONG_TEXT = (
    "今天的天气很好我们一起去公园散步吧" * 24
    + "。"
    + " and then ".join(["we walk along the quiet river and look at the boats"] * 8)
)
GOALS_MS = {"p50": 500.0, "p90": 800.0, "cached_p50": 50.0, "loop_max": 10.0}
GOAL_RSS_MIB = 600.0
ANSWER_TIMEOUT_S = 60.0
WAKE_WORD = "你好小智"


def answer_text(lang: str, i: int) -> str:
    """The i-th 10-word answer: its first segment (what is synthesised first) is new."""
    if lang == "zh":
        return f"{ROOMS_ZH[i % len(ROOMS_ZH)]}的灯已经打开了，祝你今晚过得愉快。"
    return f"The {ROOMS_EN[i % len(ROOMS_EN)]} light is on, enjoy your quiet evening now."


class Device:
    """One device on a relay: speaks an answer, times its first frame, hears it to the end."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def say(self, text: str, *, abort_after_s: float | None = None) -> float:
        """Seconds from the listen message to the first audio frame; returns at `tts stop`
        (RuntimeError if the answer ended without audio: the relay's log says why)."""
        msg = {"type": "listen", "state": "detect", "text": WAKE_WORD, "text_response": text}
        started = time.perf_counter()
        await self.ws.send_str(orjson.dumps(msg).decode())
        first: float | None = None
        async with asyncio.timeout(ANSWER_TIMEOUT_S + (abort_after_s or 0)):
            while True:
                wait = None
                if first is not None and abort_after_s is not None:
                    wait = max(0.0, started + first + abort_after_s - time.perf_counter())
                try:
                    got = await self.ws.receive(timeout=wait)
                except TimeoutError:
                    await self.ws.send_str('{"type":"abort"}')
                    abort_after_s = None
                    continue
                if got.type == WSMsgType.BINARY and first is None:
                    first = time.perf_counter() - started
                elif got.type == WSMsgType.TEXT and _is_stop(got.data):
                    break
                elif got.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    raise RuntimeError(f"the relay closed the device's socket: {got.type!r}")
        if first is None:
            raise RuntimeError(f"no audio for {text[:40]!r}")
        return first


def _is_stop(data: str) -> bool:
    msg = orjson.loads(data)
    return isinstance(msg, dict) and msg.get("type") == "tts" and msg.get("state") == "stop"


def rss_peak_kib(pid: int) -> int:
    """The process's peak resident set size in KiB (VmHWM of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def peak_rss(parent: int, peaks: dict[int, int], every_s: float = 0.1) -> None:
    """Until cancelled: into `peaks`, the peak RSS (VmHWM, KiB) of each worker of `parent`,
    read while it lives (a worker killed for a timeout takes its figures with it)."""
    while True:
        for pid in spawned_children(parent):
            try:
                peaks[pid] = max(peaks.get(pid, 0), rss_peak_kib(pid))
            except OSError:  # it has just ended
                continue
        await asyncio.sleep(every_s)


def summary(ms: list[float]) -> dict[str, float]:
    """p50 / p90 / max of latencies in ms."""
    s = sorted(ms)
    return {"p50_ms": r(median(s), 1), "p90_ms": r(percentile(s, 90), 1), "max_ms": r(s[-1], 1)}


def relay_settings(tts: str) -> dict[str, str]:
    """A relay speaking with `tts` that loads no recogniser (a cloud ASR never called)."""
    return relay_env() | {
        "RELAY__TTS__PROVIDER": tts,
        "RELAY__ASR__PROVIDER": "openai",
        "RELAY__ASR__OPENAI__BASE_URL": "http://127.0.0.1:9",
    }


async def first_answers(devices: dict[str, Device], n: int) -> dict[str, dict[str, float]]:
    """First audio (ms) of the first answer in each language after the start, per engine."""
    first: dict[str, dict[str, float]] = {e: {} for e in ENGINES}
    for lang in LANGS:
        for engine in ENGINES:
            first[engine][lang] = r(await devices[engine].say(answer_text(lang, n)) * 1000, 1)
    return first


async def trials(devices: dict[str, Device], n: int) -> dict[str, Any]:
    """First audio (ms) per engine, language and cache state."""
    ms: dict[str, dict[str, list[float]]] = {
        e: {f"{lang}_{c}": [] for lang in LANGS for c in ("uncached", "cached")} for e in ENGINES
    }
    for i in range(n):
        for lang in LANGS:
            for engine in ENGINES:
                text = answer_text(lang, i)
                ms[engine][f"{lang}_uncached"].append(await devices[engine].say(text) * 1000)
                ms[engine][f"{lang}_cached"].append(await devices[engine].say(text) * 1000)
        progress(f"trial {i + 1}/{n} done")
    out: dict[str, Any] = {}
    for engine in ENGINES:
        series = ms[engine]
        out[engine] = {k: summary(v) for k, v in series.items()}
        for c in ("uncached", "cached"):
            out[engine][f"all_{c}"] = summary(series[f"zh_{c}"] + series[f"en_{c}"])
    return out


def mib(kib: int) -> float:
    """KiB in MiB, one decimal."""
    return r(kib / 1024, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both relays, the trials, the loop and the worker's memory."""
    doc = envelope("tts_first_audio", {"trials": args.trials, "long_s": args.long_s})
    probe_out = RESULTS / "tts_first_audio.probe.json"
    with children() as started:
        kokoro_env = relay_settings("embedded") | {
            "BENCH_LOOP_TICK_MS": "5",
            "BENCH_PROBE_OUT": str(probe_out),
        }
        espeak_env = relay_settings("espeak") | {
            "BENCH_LOOP_TICK_MS": "5",
            "BENCH_PROBE_OUT": str(probe_out) + ".espeak",
        }
        launcher = ["-m", "bench._probe", "relay"]
        kokoro, k_port = start_relay(started, "tts-kokoro", kokoro_env, launcher=launcher)
        espeak, e_port = start_relay(started, "tts-espeak", espeak_env, launcher=launcher)
        async with aiohttp.ClientSession() as http:
            devices: dict[str, Device] = {}
            for i, (engine, port) in enumerate((("kokoro", k_port), ("espeak", e_port))):
                headers = {"Device-Id": mac(2, 0x20, 0, 0, 0, i), "Client-Id": f"tts-{i}"}
                ws, _ = await say_hello(http, device_url(port), headers, voice_hello())
                devices[engine] = Device(ws)
            progress("relays up, devices connected")
            first = await first_answers(devices, args.trials)
            (worker,) = spawned_children(kokoro.pid)
            rss_first = rss_kib(worker)
            espeak_out = Path(str(probe_out) + ".espeak")
            # The loops' pauses are counted from here.
            await probe_report(kokoro.pid, probe_out)
            await probe_report(espeak.pid, espeak_out)
            doc["first_audio"] = await trials(devices, args.trials)
            doc["loop"] = (await probe_report(kokoro.pid, probe_out))["loop"]
            # The same ticker in the espeak-ng relay: the pauses the machine alone makes.
            doc["loop_espeak_relay"] = (await probe_report(espeak.pid, espeak_out))["loop"]
            for engine, ms in first.items():
                doc["first_audio"][engine]["first_answer_ms"] = ms
            rss_after = rss_kib(worker)
            progress(f"long answer for {args.long_s:g} s")
            peaks: dict[int, int] = {}
            sampler = asyncio.ensure_future(peak_rss(kokoro.pid, peaks))
            try:
                long_ms: float | str = r(
                    await devices["kokoro"].say(LONG_TEXT, abort_after_s=args.long_s) * 1000, 1
                )
            except RuntimeError as exc:  # e.g. a clause slower than [tts] timeout_s
                long_ms = str(exc)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            doc["kokoro_worker"] = {
                "workers": len(spawned_children(kokoro.pid)),
                "rss_after_first_answers_mib": mib(rss_first),
                "rss_after_trials_mib": mib(rss_after),
                "rss_peak_mib": mib(max(peaks.values(), default=0)),
                "long_answer_first_audio_ms": long_ms,
            }
            for d in devices.values():
                await d.ws.close()
    doc["goals"] = goals(doc)
    return doc


def goals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against the Kokoro figures."""
    k = doc["first_audio"]["kokoro"]
    uncached, cached = k["all_uncached"], k["all_cached"]
    peak = doc["kokoro_worker"]["rss_peak_mib"]
    loop_max = doc["loop"]["max_gap_ms"]
    return [
        {"goal": "first audio p50 <= 500 ms", "value": uncached["p50_ms"],
         "pass": uncached["p50_ms"] <= GOALS_MS["p50"]},
        {"goal": "first audio p90 <= 800 ms", "value": uncached["p90_ms"],
         "pass": uncached["p90_ms"] <= GOALS_MS["p90"]},
        {"goal": "cached first audio p50 <= 50 ms", "value": cached["p50_ms"],
         "pass": cached["p50_ms"] <= GOALS_MS["cached_p50"]},
        {"goal": "loop worst pause <= 10 ms", "value": r(loop_max, 1),
         "pass": loop_max <= GOALS_MS["loop_max"]},
        {"goal": "Kokoro worker peak RSS <= 600 MB", "value": peak, "pass": peak <= GOAL_RSS_MIB},
    ]  # fmt: skip


def table(doc: dict[str, Any]) -> str:
    """The medians and goals, for a reader."""
    lines = [f"tts_first_audio: {doc['params']['trials']} trials per language and engine"]
    lines.append(f"  {'engine':<8}{'series':<14}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}")
    for engine, series in doc["first_audio"].items():
        lines.append(f"  {engine:<8}{'first answer':<14}{series['first_answer_ms']}")
        for name, s in series.items():
            if name != "first_answer_ms":
                lines.append(
                    f"  {engine:<8}{name:<14}{s['p50_ms']:>9}{s['p90_ms']:>9}{s['max_ms']:>9}"
                )
    lines.append(f"  loop: {doc['loop']}")
    lines.append(f"  loop of the espeak-ng relay: {doc['loop_espeak_relay']}")
    lines.append(f"  kokoro worker: {doc['kokoro_worker']}")
    return "\n".join(lines + goal_lines(doc["goals"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("tts_first_audio", __doc__)
    p.add_argument("--trials", type=int, default=10, help="answers per language and engine")
    p.add_argument("--long-s", type=float, default=20.0, help="seconds of the long answer")
    args = p.parse_args(argv)
    at_least_one(p, args.trials)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
