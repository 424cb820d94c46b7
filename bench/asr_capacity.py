"""Embedded ASR capacity: utterances per second before speech end → `stt` doubles.

One relay (`python -m relay serve --config config.toml`, `[asr] provider` as given, the
shipped pool of decoders; espeak-ng as its voice and no business listening, so that nothing
but recognition costs) takes open-loop arrivals: at each rate, utterances start every
1/rate seconds whatever the relay does, each from a new device (a fresh connection, hello,
`listen start` in auto mode), which streams in real time, as a microphone does, 0.6 s of
silence, a 2 s espeak-ng command (Opus 16 kHz, 60 ms packets) and then silence until its
`stt` comes. Measured per utterance: from the moment the last packet holding speech was sent
to `stt` (the VAD's `min_silence_s`, 0.6 s, included). First, the single-device baseline:
the same utterance `--baseline` times, one at a time. Then the rates rise; the knee is the
highest rate whose `stt` p50 stays within twice the baseline's p50, and the run stops
raising after the first rate beyond it.

Per rate also: the CPU of the relay and its decoder processes (utime + stime from /proc)
per utterance, and at the end each decoder process's resident memory.

    python -m bench.asr_capacity [--rates 0.2,0.4,0.6,0.8,1.0,1.3] [--utterances 10]
        [--baseline 5] [--provider embedded] [--pool-size N] [--quick]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench._cli import at_least_one, parser, run_main
from bench._common import (
    children,
    cpu_seconds,
    envelope,
    median,
    percentile,
    progress,
    r,
    rss_kib,
    spawned_children,
)
from bench._devices import mac, say_hello, unlimited_session, voice_hello
from bench._peers import device_url, relay_env, start_relay
from bench._speech import FRAME_BYTES, FRAME_S, espeak, opus_packets, silence, trim

PHRASE = "please turn on the light in the kitchen"  # ~2 s at 140 wpm, as bench.asr_accuracy
LEAD_S = 0.6
STT_TIMEOUT_S = 90.0


class Speech:
    """The device's audio: lead silence and the command as packets, then silence packets."""

    def __init__(self) -> None:
        speech = trim(espeak(PHRASE))
        self.speech_s = len(speech) / (2 * 16000)
        lead = silence(LEAD_S)
        body = lead + speech
        self.packets = opus_packets(body)
        self.last_speech = (len(body) - 1) // FRAME_BYTES
        # A fresh encoder per device would cost the load generator; Opus packets of digital
        # silence decode on their own, so one is sent again and again.
        self.quiet = opus_packets(silence(FRAME_S * 3))[-1]


async def utterance(
    http: aiohttp.ClientSession, url: str, speech: Speech, idx: int
) -> tuple[float, str]:
    """One device: connect, speak in real time, stream silence until `stt`; (seconds from the
    last speech packet to stt, its text)."""
    headers = {"Device-Id": mac(2, 0x3C, 0, 0, (idx >> 8) & 255, idx & 255)}
    ws, hello = await say_hello(http, url, headers, voice_hello())
    try:
        start = {"session_id": hello["session_id"], "type": "listen", "state": "start"}
        await ws.send_str(orjson.dumps(start | {"mode": "auto"}).decode())
        got: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    m = orjson.loads(msg.data)
                    if m.get("type") == "stt":
                        got.set_result((time.perf_counter(), str(m.get("text", ""))))
                        return
            if not got.done():
                got.set_exception(RuntimeError("the relay closed the socket before stt"))

        read = asyncio.ensure_future(reader())
        t0, end = time.perf_counter(), 0.0
        try:
            async with asyncio.timeout(STT_TIMEOUT_S):
                k = 0
                while not got.done():
                    await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.perf_counter()))
                    if got.done():
                        break
                    n = len(speech.packets)
                    await ws.send_bytes(speech.packets[k] if k < n else speech.quiet)
                    if k == speech.last_speech:
                        end = time.perf_counter()
                    k += 1
                at, text = await got
        finally:
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)
        return at - end, text
    finally:
        await ws.close()


def tree_cpu(pid: int) -> float:
    """CPU seconds of the relay and its live decoder processes."""
    total = cpu_seconds(pid)
    for child in spawned_children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:  # it has just ended
            continue
    return total


async def at_rate(
    http: aiohttp.ClientSession, url: str, speech: Speech, rate: float, n: int, pid: int, base: int
) -> dict[str, Any]:
    """`n` utterances starting every 1/rate s (open loop); their figures."""
    cpu0, t0 = tree_cpu(pid), time.perf_counter()

    async def arrival(i: int) -> tuple[float, str] | str:
        await asyncio.sleep(i / rate)
        try:
            return await utterance(http, url, speech, base + i)
        except (TimeoutError, RuntimeError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}"

    results = await asyncio.gather(*(arrival(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    done = [x for x in results if not isinstance(x, str)]
    seconds = sorted(s for s, _ in done)
    return {
        "rate_per_s": rate,
        "utterances": n,
        "answered": len(done),
        "empty_stt": sum(1 for _, text in done if not text),
        "failed": [x for x in results if isinstance(x, str)],
        "p50_ms": r(percentile(seconds, 50) * 1000, 0),
        "p90_ms": r(percentile(seconds, 90) * 1000, 0),
        "max_ms": r(seconds[-1] * 1000 if seconds else float("nan"), 0),
        "wall_s": r(wall, 1),
        "cpu_s_per_utterance": r(cpu / n, 3),
        "cpu_cores_busy": r(cpu / wall, 2),
        "heard": sorted({text for _, text in done}),
    }


def worker_rss_mib(relay_pid: int) -> list[float]:
    """Resident memory of the relay's decoder processes (MiB)."""
    rss = [rss_kib(pid) for pid in spawned_children(relay_pid)]
    return [r(kib / 1024, 0) for kib in rss if kib > 20_000]  # not multiprocessing's helper


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline, then rising rates until the knee is passed."""
    doc = envelope("asr_capacity", vars(args))  # the machine's load as the run starts
    speech = Speech()
    env = relay_env() | {"RELAY__ASR__PROVIDER": args.provider, "RELAY__TTS__PROVIDER": "espeak"}
    if args.pool_size:
        env["RELAY__ASR__POOL_SIZE"] = str(args.pool_size)
    rates = [float(x) for x in args.rates.split(",")]
    steps: list[dict[str, Any]] = []
    with children() as started:
        relay, port = start_relay(started, f"asr-capacity-{args.provider}", env)
        url = device_url(port)
        async with unlimited_session() as http:
            progress("warm-up: one utterance")
            await utterance(http, url, speech, 0)
            solo = []
            for i in range(args.baseline):
                s, text = await utterance(http, url, speech, 1 + i)
                solo.append(s)
                progress(f"baseline {i + 1}/{args.baseline}: {s * 1000:.0f} ms {text!r}")
            base_p50 = median(solo) * 1000
            for j, rate in enumerate(rates):
                n = max(args.utterances, round(rate * args.min_step_s))
                progress(f"rate {rate}/s: {n} utterances")
                step = await at_rate(http, url, speech, rate, n, relay.pid, 1000 * (j + 1))
                step["p50_over_baseline"] = r(step["p50_ms"] / base_p50, 2)
                steps.append(step)
                relay.check_alive()
                progress(
                    f"rate {rate}/s: p50 {step['p50_ms']:.0f} ms ({step['p50_over_baseline']}x), "
                    f"p90 {step['p90_ms']:.0f}, {step['answered']}/{n} answered, "
                    f"{step['cpu_s_per_utterance']} CPU s each, {step['cpu_cores_busy']} cores"
                )
                if step["p50_over_baseline"] > 2 or step["answered"] < n:
                    break
            rss = worker_rss_mib(relay.pid)
    within = [s for s in steps if s["p50_over_baseline"] <= 2 and s["answered"] == s["utterances"]]
    doc["speech_s"] = r(speech.speech_s, 2)
    doc["baseline"] = {
        "turns": len(solo),
        "p50_ms": r(base_p50, 0),
        "p90_ms": r(percentile(sorted(solo), 90) * 1000, 0),
    }
    doc["steps"] = steps
    doc["knee_rate_per_s"] = within[-1]["rate_per_s"] if within else 0.0
    doc["decoder_rss_mib"] = rss
    return doc


def table(doc: dict[str, Any]) -> str:
    """The baseline, each rate, the knee."""
    b = doc["baseline"]
    lines = [
        f"asr_capacity ({doc['params']['provider']}): speech end -> stt, {doc['speech_s']} s "
        f"command; one device: p50 {b['p50_ms']} ms, p90 {b['p90_ms']} ms",
        f"  {'rate/s':>7}{'n':>5}{'p50 ms':>9}{'x base':>8}{'p90 ms':>9}{'CPU s/utt':>11}"
        f"{'cores':>7}{'answered':>10}",
    ]
    for s in doc["steps"]:
        lines.append(
            f"  {s['rate_per_s']:>7}{s['utterances']:>5}{s['p50_ms']:>9.0f}"
            f"{s['p50_over_baseline']:>8}{s['p90_ms']:>9.0f}{s['cpu_s_per_utterance']:>11}"
            f"{s['cpu_cores_busy']:>7}{s['answered']:>10}"
        )
    lines.append(
        f"  knee: {doc['knee_rate_per_s']} utterances/s with p50 within 2x the baseline; "
        f"decoder RSS MiB {doc['decoder_rss_mib']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("asr_capacity", __doc__)
    p.add_argument("--provider", default="embedded", help="[asr] provider (a batch decoder)")
    p.add_argument("--pool-size", type=int, default=0, help="[asr] pool_size; 0: as shipped")
    p.add_argument("--rates", default="0.2,0.4,0.6,0.8,1.0,1.3", help="utterances per second")
    p.add_argument("--utterances", type=int, default=10, help="at least this many per rate")
    p.add_argument(
        "--min-step-s", type=float, default=0.0, help="and at least this many seconds of arrivals"
    )
    p.add_argument("--baseline", type=int, default=5, help="single-device utterances")
    p.add_argument("--quick", action="store_true", help="2 baseline turns, 2 rates of 4")
    args = p.parse_args(argv)
    if args.quick:
        args.baseline, args.utterances, args.rates = 2, 4, "0.3,1.0"
    at_least_one(p, args.utterances, args.baseline)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
