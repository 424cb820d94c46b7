"""Talking devices per core: the relay's uplink decode + VAD for N real-time streams at once.

In-process: N `relay.device.listener.Listener`s in realtime mode (--mode manual:
push-to-talk, decoded but not scored) share one `AudioBatcher` on a
ThreadPoolExecutor of ONE thread (the "per core" of the goal), a real Silero model and an
ASR stub that takes audio and discards it (this measures decode + VAD, not ASR). Every
listener is fed a real Opus packet every 60 ms (espeak-ng speech and silence, encoded once
and looped, each stream at its own place in the loop), with phases staggered over the 60 ms.

lag = the moment the loop sees a packet's windows scored (the batcher's future for the job
that carried it is done) - the packet's scheduled arrival. CPU per frame = process CPU
(utime+stime of every thread) / packets. The sweep finds the largest N with lag p99 < 60 ms
and no packet dropped. The baseline, in the same run: the same N streams' packets through
`UplinkDecoder.decode` + `VadStream.process_many` in a tight loop (one batched step per 60 ms
of audio, no event loop, no listener), i.e. the raw cost the relay's machinery adds to.

The batcher's window (`[vad] batch_window_ms`, how long a job waits for other streams to
share its batch) is the relay's default unless --batch-window-ms lists others; the first is
the one judged, the rest run interleaved with it as experiments, so all see the same noise.
So do the log settings of --log (off, or INFO as text or JSON into
bench/results/voice_streams-log.log): the first is judged, the others are experiments.

    python -m bench.voice_streams [--streams 100,200,300,400] [--seconds 6] [--repeat 3]
                                  [--batch-window-ms 10,0] [--log off,text,json]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np

from asr_tts.asr.base import ASRStream
from asr_tts.segmenter import SegmenterConfig
from asr_tts.uplink import UplinkDecoder
from asr_tts.vad import SileroModel, VadStream
from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import RESULTS, envelope, median, percentile, progress, r
from bench._sched import thread_sched
from bench._speech import FRAME_S, espeak, opus_packets, silence, trim
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from relay.config.schema import LogConfig, ServerConfig, VADConfig
from relay.device.audio_batcher import AudioBatcher, AudioJob
from relay.device.listener import Listener, VoiceDeps
from relay.logs import configure, formatter
from relay.run.cli import tune_gc

P = ParamSpec("P")
T = TypeVar("T")
GOAL_STREAMS = 400
GOAL_LAG_P99_MS = 60.0
SPEECH = (
    "Turn on the light in the kitchen, please. What is the weather like today? "
    "Play some music and set a timer for ten minutes."
)


# ---- the relay's pipeline, instrumented from outside -------------------------------------


class _StubStream:
    """An utterance the stub 'recognises': audio is dropped."""

    async def feed(self, pcm: bytes) -> None:
        return None

    async def finish(self) -> str:
        return ""

    async def cancel(self) -> None:
        return None


class StubASR:
    """An ASR provider that accepts and discards audio (the benchmark measures decode + VAD)."""

    name = "stub"

    def __init__(self) -> None:
        self.opened = 0

    async def open(self, *, language: str | None = None) -> ASRStream:
        """A new utterance."""
        self.opened += 1
        return _StubStream()


class TimedExecutor(ThreadPoolExecutor):
    """A thread pool that records, per job, its batch size, its thread CPU and wall time."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="bench-audio")
        self.batches: list[int] = []
        self.packets = 0  # uplink packets decoded and scored by all jobs so far
        self.cpu_s = 0.0
        self.busy_s = 0.0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn` as ThreadPoolExecutor would, timing it in the worker thread."""
        first = args[0] if args else None
        jobs: list[Any] = first if isinstance(first, list) else []
        size = len(jobs) or 1
        packets = sum(len(j.packets) for j in jobs if isinstance(j, AudioJob))

        def timed() -> T:
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                c1, w1 = time.thread_time(), time.perf_counter()
                with self._lock:
                    self.batches.append(size)
                    self.packets += packets
                    self.cpu_s += c1 - c0
                    self.busy_s += w1 - w0

        return super().submit(timed)


@dataclass
class Stream:
    """One simulated device: its listener, where it is in the clip, packets awaiting scores."""

    listener: Listener
    offset: int
    phase_s: float
    scheduled: deque[float] = field(default_factory=deque)  # per packet in flight, in order


@dataclass
class Window:
    """What one timed window of one sweep point recorded."""

    t0: float
    t1: float
    lags_ms: list[float] = field(default_factory=list)
    fed: int = 0
    dropped: int = 0


class LagBatcher(AudioBatcher):
    """The relay's AudioBatcher; each job's future, when done, dates its packets' scores."""

    def __init__(self, executor: TimedExecutor, max_in_flight: int, window_s: float) -> None:
        super().__init__(executor, max_in_flight=max_in_flight, window_s=window_s)
        self.streams: dict[int, Stream] = {}  # id(decoder) -> stream: a job names its decoder
        self.window: Window | None = None

    def submit(self, job: AudioJob) -> asyncio.Future[AudioJob]:
        """As AudioBatcher.submit, plus a done callback that records each packet's lag."""
        fut = super().submit(job)
        stream = self.streams[id(job.decoder)]
        n = len(job.packets)
        # What the listener dropped as late ([vad] max_late_ms) went before this job's packets.
        w = self.window
        for _ in range(len(stream.scheduled) - n):
            t = stream.scheduled.popleft()
            if w is not None and w.t0 <= t < w.t1:
                w.dropped += 1

        def scored(_f: asyncio.Future[AudioJob]) -> None:
            now = time.monotonic()
            w = self.window
            for _ in range(n):
                t = stream.scheduled.popleft()
                if w is not None and w.t0 <= t < w.t1:
                    w.lags_ms.append((now - t) * 1000)

        fut.add_done_callback(scored)
        return fut

    async def drain(self) -> None:
        """Forget queued jobs, wait (bounded) for the batch in flight: before shutdown."""
        self._pending.clear()
        for _ in range(250):
            if not self._in_flight and self._timer is None:
                return
            await asyncio.sleep(0.02)


def process_cpu_s() -> float:
    """CPU of this process, all threads (utime + stime)."""
    t = os.times()
    return t.user + t.system


async def run_point(  # noqa: PLR0915 - one measurement's phases and its figures in order
    model: SileroModel, clip: list[bytes], n: int, args: argparse.Namespace, window_s: float
) -> dict[str, Any]:
    """N listeners fed in real time for warm-up + the timed window; the window's figures."""
    loop = asyncio.get_running_loop()
    executor = TimedExecutor(max_workers=args.threads)
    pid = os.getpid()
    tids = [threading.get_native_id()]  # the loop's thread, then the executor's
    if args.threads == 1:
        tids.append(executor.submit(threading.get_native_id).result())
    batcher = LagBatcher(executor, args.in_flight, window_s)
    asr = StubASR()
    deps = VoiceDeps(
        asr=asr, vad=model, segmenter=SegmenterConfig(), batcher=batcher, metrics=Metrics()
    )
    streams: list[Stream] = []
    for i in range(n):
        listener = Listener(
            deps,
            AudioFormat(),
            on_speech=lambda: None,
            on_text=lambda _text, _t: None,
            device_id=f"bench-{i}",
        )
        listener.start(args.mode)
        stream = Stream(listener, offset=(i * 7919) % len(clip), phase_s=FRAME_S * i / n)
        batcher.streams[id(listener._decoder)] = stream
        streams.append(stream)

    start = time.monotonic() + 0.2
    warm_end = start + args.warmup_s
    window = Window(warm_end, warm_end + args.seconds)
    feed_end = window.t1
    # uvloop's clock and time.monotonic differ by a constant offset: schedule in loop time,
    # measure in monotonic time.
    to_loop = loop.time() - time.monotonic()

    def tick(stream: Stream, k: int) -> None:
        t = start + stream.phase_s + k * FRAME_S
        if t >= feed_end:
            return
        packet = clip[(stream.offset + k) % len(clip)]
        if stream.listener.feed(packet):
            stream.scheduled.append(t)
            if window.t0 <= t < window.t1:
                window.fed += 1
        elif window.t0 <= t < window.t1:
            window.dropped += 1
        loop.call_at(t + FRAME_S + to_loop, tick, stream, k + 1)

    for stream in streams:
        loop.call_at(start + stream.phase_s + to_loop, tick, stream, 0)

    await asyncio.sleep(max(0.0, warm_end - time.monotonic()))
    batcher.window = window
    sched0 = [thread_sched(pid, tid) for tid in tids]
    cpu0, ex_cpu0, ex_busy0, nb0, np0 = (
        process_cpu_s(),
        executor.cpu_s,
        executor.busy_s,
        len(executor.batches),
        executor.packets,
    )
    await asyncio.sleep(max(0.0, window.t1 - time.monotonic()))
    cpu1, ex_cpu1, ex_busy1 = process_cpu_s(), executor.cpu_s, executor.busy_s
    processed = executor.packets - np0
    sched1 = [thread_sched(pid, tid) for tid in tids]
    batches = executor.batches[nb0:]
    # Let the packets of the window finish (bounded): their lags belong to it.
    for _ in range(max(1, round(args.drain_s / 0.02))):
        if not any(s.scheduled for s in streams):
            break
        await asyncio.sleep(0.02)
    unscored = sum(1 for s in streams for t in s.scheduled if window.t0 <= t < window.t1)
    batcher.window = None
    for s in streams:
        await s.listener.close()
    await batcher.drain()
    executor.shutdown(wait=True, cancel_futures=True)

    wall = window.t1 - window.t0
    # Run-queue wait per second of the window: time ready to run while another process had
    # the CPU (the noise of a shared machine), for the loop thread and the executor thread.
    waits = [r((b[1] - a[1]) / wall) for a, b in zip(sched0, sched1, strict=True)]
    # CPU per packet decoded and scored in the window (under overload, fewer than were fed).
    frames = processed
    lags = sorted(window.lags_ms)
    cpu = cpu1 - cpu0
    ex_cpu = ex_cpu1 - ex_cpu0
    per_frame_us = cpu * 1e6 / frames if frames else float("nan")
    return {
        "streams": n,
        "frames": window.fed,
        "frames_processed": processed,
        "dropped": window.dropped,
        "unscored": unscored,
        "lag_p50_ms": r(percentile(lags, 50)),
        "lag_p90_ms": r(percentile(lags, 90)),
        "lag_p99_ms": r(percentile(lags, 99)),
        "lag_max_ms": r(lags[-1] if lags else float("nan")),
        "cpu_us_per_frame": r(per_frame_us, 1),
        "executor_cpu_us_per_frame": r(ex_cpu * 1e6 / frames if frames else float("nan"), 1),
        "loop_cpu_us_per_frame": r((cpu - ex_cpu) * 1e6 / frames if frames else float("nan"), 1),
        "executor_busy": r((ex_busy1 - ex_busy0) / wall),
        "process_cpu_cores": r(cpu / wall),
        "loop_runqueue_wait": waits[0],
        "executor_runqueue_wait": waits[1] if len(waits) > 1 else float("nan"),
        "batches_per_s": r(len(batches) / wall, 1),
        "batch_median": median(batches),
        "batch_mean": r(sum(batches) / len(batches) if batches else float("nan"), 1),
        # 1 core / (CPU per frame x 16.7 frames per second per stream)
        "streams_per_core_by_cpu": r(1e6 / (per_frame_us / FRAME_S), 0) if frames else 0.0,
        "utterances_opened": asr.opened,
        "pass": window.fed > 0
        and window.dropped == 0
        and unscored == 0
        and percentile(lags, 99) < GOAL_LAG_P99_MS,
    }


# ---- the baseline: decode + VAD in a tight loop -------------------------------------------


def run_baseline(model: SileroModel, clip: list[bytes], n: int, steps: int) -> dict[str, Any]:
    """N streams, `steps` packets each, decoded and scored one batched step at a time."""
    decoders = [UplinkDecoder(AudioFormat()) for _ in range(n)]
    vads = [VadStream(model) for _ in range(n)]
    offsets = [(i * 7919) % len(clip) for i in range(n)]
    for k in range(3):  # warm-up: first calls allocate
        chunks = [
            d.decode(clip[(o + k) % len(clip)]) for d, o in zip(decoders, offsets, strict=True)
        ]
        VadStream.process_many(vads, chunks)
    decode_s = vad_s = 0.0
    c0 = process_cpu_s()
    for k in range(3, 3 + steps):
        t0 = time.thread_time()
        chunks = [
            d.decode(clip[(o + k) % len(clip)]) for d, o in zip(decoders, offsets, strict=True)
        ]
        t1 = time.thread_time()
        VadStream.process_many(vads, chunks)
        t2 = time.thread_time()
        decode_s += t1 - t0
        vad_s += t2 - t1
    cpu = process_cpu_s() - c0
    frames = n * steps
    per_frame_us = cpu * 1e6 / frames
    return {
        "streams": n,
        "frames": frames,
        "cpu_us_per_frame": r(per_frame_us, 1),
        "decode_us_per_frame": r(decode_s * 1e6 / frames, 1),
        "vad_us_per_frame": r(vad_s * 1e6 / frames, 1),
        "streams_per_core_by_cpu": r(1e6 / (per_frame_us / FRAME_S), 0),
    }


def vad_cost_by_batch(
    model: SileroModel, sizes: tuple[int, ...], repeat: int = 5
) -> dict[str, float]:
    """CPU us per window of one batched Silero call, by batch size (median of `repeat`)."""
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for b in sizes:
        windows = rng.normal(0.0, 0.1, (b, 576)).astype(np.float32)
        state = np.zeros((2, b, 128), np.float32)
        model.run(windows, state)
        calls = max(1, 400 // b)
        runs = []
        for _ in range(repeat):
            t0 = time.thread_time()
            for _ in range(calls):
                model.run(windows, state)
            runs.append((time.thread_time() - t0) * 1e6 / (calls * b))
        out[str(b)] = r(median(runs), 1)
    return out


def opus_decode_cost(clip: list[bytes], repeat: int = 5) -> float:
    """CPU us per packet of UplinkDecoder.decode alone (median of `repeat` passes)."""
    decoder = UplinkDecoder(AudioFormat())
    runs = []
    for _ in range(repeat):
        t0 = time.thread_time()
        for packet in clip:
            decoder.decode(packet)
        runs.append((time.thread_time() - t0) * 1e6 / len(clip))
    return r(median(runs), 1)


# ---- orchestration ----------------------------------------------------------------------


def make_clip() -> tuple[list[bytes], float]:
    """The looped uplink: 1 s silence, speech, 1.5 s silence, as Opus packets; speech share."""
    speech = trim(espeak(SPEECH))
    pcm = silence(1.0) + speech + silence(1.5)
    packets = opus_packets(pcm)
    return packets, len(speech) / len(pcm)


def medians(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every number across repetitions; pass only if every repetition passed."""
    out: dict[str, Any] = {}
    for key, value in reps[0].items():
        if isinstance(value, bool):
            out[key] = all(rep[key] for rep in reps)
        elif isinstance(value, int | float):
            out[key] = r(median([rep[key] for rep in reps]))
    return out


def set_log(setting: str) -> None:
    """The relay's logging as `[log]` would set it: off (WARNING) or INFO in the text or JSON
    format, written to bench/results/voice_streams-log.log (not among the progress lines)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(RESULTS / "voice_streams-log.log", encoding="utf-8")
    handler.setFormatter(formatter("text" if setting == "off" else setting))
    level = logging.WARNING if setting == "off" else logging.INFO
    configure(LogConfig(level="WARNING"))  # the record optimisations of relay.logs
    logging.basicConfig(level=level, handlers=[handler], force=True)


def variants(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """(name, batch window s, log setting) of each run per repetition; the first is judged:
    every batch window with the first log setting, then the other log settings."""
    first_log = args.log[0]
    out = [(f"batch_window_{d:g}ms", d / 1000, first_log) for d in args.batch_window_ms]
    judged_s = args.batch_window_ms[0] / 1000
    return out + [(f"log_{setting}", judged_s, setting) for setting in args.log[1:]]


async def sweep(model: SileroModel, clip: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Every N of the sweep, `repeat` times: the baseline, then the relay, then each
    experiment (batch window, log setting), interleaved so that machine noise lands on all."""
    points: dict[str, Any] = {}
    runs_of = variants(args)
    judged = runs_of[0][0]
    for n in args.streams:
        base_reps: list[dict[str, Any]] = []
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs_of}
        for i in range(args.repeat):
            progress(f"N={n} rep {i + 1}/{args.repeat}: baseline")
            base_reps.append(run_baseline(model, clip, n, args.baseline_steps))
            for name, window_s, log_setting in runs_of:
                what = f"relay listeners, batch window {window_s * 1000:g} ms, log {log_setting}"
                if name != judged:
                    what = "experiment: " + what
                progress(f"N={n} rep {i + 1}/{args.repeat}: {what}, {args.seconds:.0f}s")
                set_log(log_setting)
                got = await run_point(model, clip, n, args, window_s)
                runs[name].append(got)
                progress(
                    f"  lag p50 {got['lag_p50_ms']:.1f} p99 {got['lag_p99_ms']:.1f} ms, "
                    f"dropped {got['dropped']}, cpu {got['cpu_us_per_frame']:.0f} us/frame "
                    f"(baseline {base_reps[-1]['cpu_us_per_frame']:.0f}), batch ~"
                    f"{got['batch_mean']:.0f}, executor busy {got['executor_busy']:.2f}, "
                    f"run-queue wait loop {got['loop_runqueue_wait']:.2f} executor "
                    f"{got['executor_runqueue_wait']:.2f}"
                )
        bmed = medians(base_reps)
        rmed = medians(runs[judged])
        points[str(n)] = {
            "relay": rmed,
            "baseline": bmed,
            "cpu_ratio_relay_over_baseline": r(
                rmed["cpu_us_per_frame"] / bmed["cpu_us_per_frame"], 2
            ),
            "experiments": {name: medians(reps) for name, reps in runs.items() if name != judged},
            "repetitions": {"baseline": base_reps, **runs},
        }
    return points


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    lines = [
        f"voice streams: {doc['params']['threads']} executor thread(s), "
        f"median of {doc['params']['repeat']} repetitions, {doc['params']['seconds']:.0f} s each",
        f"  {'N':>5}{'lag p50':>9}{'p99':>8}{'max':>8}{'drop':>6}{'relay us/fr':>12}"
        f"{'loop':>7}{'exec':>7}{'base us/fr':>11}{'ratio':>7}{'batch':>7}{'busy':>6}  pass",
    ]
    for n, p in doc["points"].items():
        rl, b = p["relay"], p["baseline"]
        lines.append(
            f"  {n:>5}{rl['lag_p50_ms']:>9.1f}{rl['lag_p99_ms']:>8.1f}{rl['lag_max_ms']:>8.1f}"
            f"{rl['dropped']:>6.0f}{rl['cpu_us_per_frame']:>12.1f}"
            f"{rl['loop_cpu_us_per_frame']:>7.0f}{rl['executor_cpu_us_per_frame']:>7.0f}"
            f"{b['cpu_us_per_frame']:>11.1f}{p['cpu_ratio_relay_over_baseline']:>7.2f}"
            f"{rl['batch_mean']:>7.0f}{rl['executor_busy']:>6.2f}  {'yes' if rl['pass'] else 'NO'}"
        )
    for n, p in doc["points"].items():
        for name, e in p["experiments"].items():
            lines.append(
                f"  {n:>5} {name}: lag p50 {e['lag_p50_ms']:.1f} p99 {e['lag_p99_ms']:.1f} ms, "
                f"drop {e['dropped']:.0f}, {e['cpu_us_per_frame']:.0f} us/frame, batch "
                f"{e['batch_mean']:.0f}, busy {e['executor_busy']:.2f}, pass {e['pass']}"
            )
    micro = doc["micro"]
    lines.append(
        "  Silero us/window by batch size: "
        + ", ".join(f"{b}: {v:.0f}" for b, v in micro["vad_us_per_window_by_batch"].items())
        + f"; Opus decode {micro['opus_decode_us_per_packet']:.0f} us/packet"
    )
    lines += goal_lines(doc["goals"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("voice_streams", __doc__)
    p.add_argument(
        "--streams",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 200, 300, 400],
        help="comma-separated N to sweep",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="timed window per point")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--drain-s", type=float, default=3.0, help="cap on waiting for stragglers")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="executor threads (1 = per core)")
    p.add_argument("--in-flight", type=int, default=1, help="AudioBatcher max_in_flight")
    p.add_argument(
        "--batch-window-ms",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[VADConfig().batch_window_ms],
        help="comma-separated AudioBatcher windows; the first (default: the relay's) is "
        "judged, the others are experiments",
    )
    p.add_argument(
        "--log",
        type=lambda s: s.split(","),
        default=["off"],
        help="comma-separated log settings (off, text, json: INFO in that format); the "
        "first is judged, the others run as experiments with the judged batch window",
    )
    p.add_argument("--baseline-steps", type=int, default=50, help="60 ms steps per baseline")
    p.add_argument(
        "--mode",
        choices=("realtime", "manual"),
        default="realtime",
        help="listen mode of every stream; manual (push-to-talk) decodes without scoring "
        "(the baseline still decodes and scores)",
    )
    args = p.parse_args(argv)
    at_least_one(p, *args.streams, args.repeat, args.threads, args.in_flight)
    if not set(args.log) <= {"off", "text", "json"}:
        p.error("--log takes off, text and json")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the audio and the model, sweep, return the JSON document."""
    progress("encoding the clip (espeak-ng -> Opus 16 kHz, 60 ms)")
    clip, speech_share = make_clip()
    model = SileroModel(threads=1)  # as relay.providers.build_voice
    progress("micro-benchmarks: Silero cost per window by batch size, Opus decode")
    micro = {
        "vad_us_per_window_by_batch": vad_cost_by_batch(model, (1, 2, 5, 10, 25, 50, 100, 400)),
        "opus_decode_us_per_packet": opus_decode_cost(clip),
    }
    # The collector as `python -m relay serve` sets it ([server] gc_freeze, gc_gen0_threshold).
    server = ServerConfig()
    tune_gc(server.gc_freeze, server.gc_gen0_threshold)
    points = await sweep(model, clip, args)
    passing = [int(n) for n, p in points.items() if p["relay"]["pass"]]
    best = max(passing, default=0)
    return envelope("voice_streams", vars(args)) | {
        "clip": {
            "packets": len(clip),
            "seconds": r(len(clip) * FRAME_S, 2),
            "speech_share": r(speech_share, 2),
        },
        "micro": micro,
        "points": points,
        "largest_passing_streams": best,
        "goals": [
            {
                "goal": f">= {GOAL_STREAMS} streams on one executor thread with lag p99 < "
                f"{GOAL_LAG_P99_MS:.0f} ms and no drops",
                "value": best,
                "pass": best >= GOAL_STREAMS,
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
