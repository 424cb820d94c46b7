"""How long the embedded ASR stalls the event loop: decoders in worker processes vs in a thread.

One espeak-ng utterance of ~13 s (the commands of the voice tests, six times over) is
recognised again and again, in both modes of the embedded provider:

- full vocabulary: streamed, decoded while it arrives (here it arrives in a burst, the worst
  case: the whole backlog is decoded at finish());
- command grammar: decoded in one go at finish().

Each repetition feeds the utterance in 60 ms frames (yielding to the loop between frames)
and finishes it, while a task wakes every 5 ms and records the gaps between its wake-ups.
Two designs, interleaved repetition by repetition so that both see the same noise:

- process: `PocketsphinxASR` as it is (each decoder in a spawned worker process);
- thread: the design it replaced, rebuilt here: the decoder in this process, its calls in a
  one-thread ThreadPoolExecutor, audio in 60 ms process_raw() slices (the command grammar:
  a cepstral-mean pass under a one-word search, then the slices).

Whisper base, the embedded default, runs only in worker processes (a decode holds two cores for
~1 s; no thread design was ever shipped): its mode measures a 2 s command the same way, with
early recognition's pattern too (an early decode discarded, then the whole), issue #19's goal
being a worst loop pause of 10 ms or less while it decodes.

Reported per mode and design, medians over the repetitions: decode time (first frame fed to
text), the loop's max and p99 tick gap, this process's CPU time; the decoder's start (its
load; for the process design the worker's spawn too) and the loop's max gap meanwhile;
resident memory.

    python -m bench.asr_loop_stall [--reps 5] [--modes command_grammar,full_vocabulary,whisper]

stdout: one JSON document; stderr: progress, then a table.

The worker processes import this module as `__mp_main__` (multiprocessing's spawn does so
for a module run with -m, unless it is a package's __main__, as with `python -m relay`), so
its top level imports nothing the relay's workers would not import anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from pocketsphinx import Decoder

from asr_tts.asr.base import EarlyStream
from asr_tts.asr.pocketsphinx import PocketsphinxASR, command_grammar
from asr_tts.asr.pool import DecoderPool
from bench._common import envelope, median, percentile, progress, r, rss_kib, spawned_children

TEXT = "turn on the light. what time is it. dance. " * 6
WHISPER_TEXT = "please turn on the light in the kitchen"  # ~2 s, the latency test's command
COMMANDS = ["turn on the light", "turn off the light", "what time is it", "dance", "stop"]
FRAME_BYTES = 1920  # 60 ms of 16 kHz s16le, as the relay feeds
TICK_S = 0.005
Recognise = Callable[[bytes], Awaitable[str]]


class ThreadDesign:
    """The design replaced: one decoder in this process, its calls in one thread."""

    slice_bytes = FRAME_BYTES  # one process_raw call: 60 ms of audio, the GIL free between
    job_bytes = 8000  # feed() handed audio over in 250 ms lots

    def __init__(self, grammar_words: list[str] | None) -> None:
        self._words = grammar_words
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asr-thread-baseline")
        self._decoder: Decoder | None = None
        self._in_utterance = False
        self._rng = np.random.default_rng(0)

    def close(self) -> None:
        """Stop the thread."""
        self._executor.shutdown(wait=True)

    def _load(self) -> Decoder:
        if self._words is None:
            return Decoder(loglevel="FATAL", fwdflat=False, bestpath=False)
        decoder = Decoder(loglevel="FATAL", lm=None)
        decoder.add_jsgf_string("commands", command_grammar(self._words))
        word = min(w for p in self._words for w in p.split())
        decoder.add_jsgf_string("cmn", f"#JSGF V1.0;\ngrammar cmn;\npublic <w> = {word} ;\n")
        decoder.activate_search("commands")
        return decoder

    async def start(self, _pcm: bytes) -> str:
        """Load the decoder (in the thread, as the old provider did)."""
        await asyncio.wrap_future(self._executor.submit(self._begin, False))
        return ""

    def _begin(self, first: bool) -> Decoder:
        if self._decoder is None:
            self._decoder = self._load()
        if first:
            if self._in_utterance:
                self._decoder.end_utt()
            self._decoder.start_utt()
            self._in_utterance, self._rng = True, np.random.default_rng(0)
        return self._decoder

    def _dither(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        x += self._rng.standard_normal(x.size, dtype=np.float32) * 20.0
        return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()

    def _slices(self, d: Decoder, data: bytes) -> None:
        for i in range(0, len(data), self.slice_bytes):
            d.process_raw(data[i : i + self.slice_bytes], False, False)

    def _process(self, pcm: bytes, first: bool) -> None:
        self._slices(self._begin(first), self._dither(pcm))

    def _finish(self, pcm: bytes, first: bool) -> str:
        d = self._begin(first)
        data = self._dither(pcm)
        if self._words is not None and data:
            d.end_utt()
            d.activate_search("cmn")
            d.start_utt()
            d.process_raw(data, False, True)
            cmn = d.get_cmn()
            d.end_utt()
            d.activate_search("commands")
            d.set_cmn(cmn)
            d.start_utt()
        self._slices(d, data)
        d.end_utt()
        self._in_utterance = False
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""

    async def recognise(self, pcm: bytes) -> str:
        """One utterance, fed as the old stream did (250 ms jobs while streaming)."""
        pending, first = bytearray(), True
        job: Future[None] | None = None
        for i in range(0, len(pcm), FRAME_BYTES):
            pending += pcm[i : i + FRAME_BYTES]
            streaming = self._words is None
            if streaming and len(pending) >= self.job_bytes and (job is None or job.done()):
                job = self._executor.submit(self._process, bytes(pending), first)
                pending.clear()
                first = False
            await asyncio.sleep(0)
        if job is not None:
            await asyncio.wrap_future(job)
        final = self._executor.submit(self._finish, bytes(pending), first)
        return await asyncio.wrap_future(final)


async def process_recognise(asr: DecoderPool, pcm: bytes, *, early: bool = False) -> str:
    """One utterance through the provider, fed in 60 ms frames."""
    stream = await asr.open()
    for i in range(0, len(pcm), FRAME_BYTES):
        await stream.feed(pcm[i : i + FRAME_BYTES])
        await asyncio.sleep(0)
        if early and i == len(pcm) // 2 // FRAME_BYTES * FRAME_BYTES:
            # a pause halfway, then speech again: an early decode begun, then discarded
            if not (isinstance(stream, EarlyStream) and stream.start_early()):
                raise RuntimeError("the stream took no early decode")
            stream.discard_early()
    return await stream.finish()


async def timed(recognise: Recognise, pcm: bytes) -> dict[str, Any]:
    """Recognise `pcm` while a task ticks every 5 ms: decode time, tick gaps, CPU."""
    stamps = [time.perf_counter()]
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            stamps.append(time.perf_counter())

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(tick())
        cpu, t0 = time.process_time(), time.perf_counter()
        text = await recognise(pcm)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
        stop.set()
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return {
        "decode_ms": wall * 1000,
        "max_gap_ms": gaps[-1] * 1000,
        "p99_gap_ms": percentile(gaps, 99) * 1000,
        "cpu_ms": cpu * 1000,
        "text": text,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions (and the worst max gap)."""
    keys = ("decode_ms", "max_gap_ms", "p99_gap_ms", "cpu_ms")
    out: dict[str, Any] = {f"{k}_median": r(median([x[k] for x in runs]), 1) for k in keys}
    out["max_gap_ms_worst"] = r(max(x["max_gap_ms"] for x in runs), 1)
    out["texts"] = sorted({x["text"] for x in runs})
    return out


def worker_pids() -> list[int]:
    """This process's children that are decoder workers (spawned by multiprocessing)."""
    return spawned_children(os.getpid())


def mib(kib: int) -> float:
    """KiB to MiB, rounded."""
    return r(kib / 1024, 1)


async def run_mode(name: str, grammar: list[str] | None, pcm: bytes, reps: int) -> dict[str, Any]:
    """Both designs in one mode: the decoder's start, a warm-up, `reps` interleaved runs."""
    rss_before = rss_kib(os.getpid())
    thread = ThreadDesign(grammar)
    asr = PocketsphinxASR(pool_size=1, timeout_s=120, grammar_words=grammar)

    async def process_start(_pcm: bytes) -> str:
        await (await asr.open()).cancel()
        return ""

    try:
        starts = {
            "thread": await timed(thread.start, b""),
            "process": await timed(process_start, b""),
        }
        await thread.recognise(pcm)  # the same utterances before the runs: the same live CMN
        await process_recognise(asr, pcm)
        rss_thread = rss_kib(os.getpid()) - rss_before
        (pid,) = worker_pids()
        rss_worker = rss_kib(pid)
        runs: dict[str, list[dict[str, Any]]] = {"thread": [], "process": []}
        for rep in range(reps):
            progress(f"{name}: repetition {rep + 1}/{reps}")
            runs["thread"].append(await timed(thread.recognise, pcm))
            runs["process"].append(await timed(lambda p: process_recognise(asr, p), pcm))
        rss_worker_after = rss_kib(pid)
    finally:
        asr.close()
        thread.close()
    out: dict[str, Any] = {}
    for design in ("thread", "process"):
        start = starts[design]
        out[design] = {
            **summary(runs[design]),
            "start": {"ms": r(start["decode_ms"], 1), "max_gap_ms": r(start["max_gap_ms"], 1)},
        }
    # This process's RSS growth over the decoder's load and one utterance (the command grammar
    # runs first, on a clean process; the full vocabulary may reuse what it freed).
    out["thread"]["rss_growth_mib_in_this_process"] = mib(rss_thread)
    out["process"]["worker_rss_mib_after_warm_up"] = mib(rss_worker)
    out["process"]["worker_rss_mib_after_runs"] = mib(rss_worker_after)
    return out


async def whisper_mode(pcm: bytes, reps: int) -> dict[str, Any]:
    """Whisper base in its worker process: its start, then `reps` commands decoded once, and
    `reps` with an early decode discarded halfway (two decodes, one after the other)."""
    from asr_tts.asr.whisper import WhisperASR  # here: pocketsphinx's workers never need it

    asr = WhisperASR(pool_size=1, timeout_s=120, language="en")

    async def start(_pcm: bytes) -> str:
        await (await asr.open()).cancel()
        return ""

    try:
        started = await timed(start, b"")
        await process_recognise(asr, pcm)  # warm-up
        once: list[dict[str, Any]] = []
        twice: list[dict[str, Any]] = []
        for rep in range(reps):
            progress(f"whisper: repetition {rep + 1}/{reps}")
            once.append(await timed(lambda p: process_recognise(asr, p), pcm))
            twice.append(await timed(lambda p: process_recognise(asr, p, early=True), pcm))
        (pid,) = worker_pids()
        rss_worker = rss_kib(pid)
    finally:
        asr.close()
        await asr.wait_closed()
    return {
        "process": {
            **summary(once),
            "start": {"ms": r(started["decode_ms"], 1), "max_gap_ms": r(started["max_gap_ms"], 1)},
            "worker_rss_mib": mib(rss_worker),
        },
        "process_early_discarded": summary(twice),
    }


async def idle_floor(seconds: float = 2.0) -> dict[str, float]:
    """The tick gaps of a loop with nothing else to do: the noise under every figure."""

    async def nothing(_pcm: bytes) -> str:
        await asyncio.sleep(seconds)
        return ""

    out = await timed(nothing, b"")
    return {"max_gap_ms": r(out["max_gap_ms"], 1), "p99_gap_ms": r(out["p99_gap_ms"], 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark."""
    from bench._speech import espeak  # here: the workers never need it

    pcm = espeak(TEXT)
    progress(f"utterance: {len(pcm) / 32000:.1f} s")
    modes = args.modes.split(",")
    params = {"reps": args.reps, "tick_ms": TICK_S * 1000, "modes": modes}
    doc: dict[str, Any] = envelope("asr_loop_stall", params) | {
        "utterance": {"text": TEXT.strip(), "seconds": r(len(pcm) / 32000, 2)},
        "idle_loop": await idle_floor(),
    }
    if "command_grammar" in modes:
        doc["command_grammar"] = await run_mode("command grammar", COMMANDS, pcm, args.reps)
    if "full_vocabulary" in modes:
        doc["full_vocabulary"] = await run_mode("full vocabulary", None, pcm, args.reps)
    if "whisper" in modes:
        command = espeak(WHISPER_TEXT)
        doc["whisper_command"] = {"text": WHISPER_TEXT, "seconds": r(len(command) / 32000, 2)}
        doc["whisper"] = await whisper_mode(command, args.reps)
    return doc


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary (medians; start: the decoder's load)."""
    head = ("mode", "design", "decode ms", "max gap", "p99 gap", "cpu ms", "start ms", "gap")
    fmt = "{:<16}{:<24}{:>10}{:>9}{:>9}{:>8}{:>10}{:>7}"
    lines = [fmt.format(*head)]
    modes = (
        ("full_vocabulary", ("thread", "process")),
        ("command_grammar", ("thread", "process")),
        ("whisper", ("process", "process_early_discarded")),
    )
    for mode, designs in modes:
        for design in designs if mode in doc else ():
            x = doc[mode][design]
            start = x.get("start", {"ms": "", "max_gap_ms": ""})  # none for the early runs
            row = (x["decode_ms_median"], x["max_gap_ms_median"], x["p99_gap_ms_median"])
            lines.append(fmt.format(mode, design, *row, x["cpu_ms_median"], *start.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    import uvloop  # here: the workers never need it

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="command_grammar,full_vocabulary,whisper")
    doc = uvloop.run(run(parser.parse_args(argv)))
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    print(table(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
