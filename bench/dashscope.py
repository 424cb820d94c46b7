"""DashScope through the local fake: what the relay's providers add to the service's own time.

The fake inference WebSocket (tests/asr_tts/fake_dashscope.py) runs on its own thread and
event loop on a loopback port; the providers run on the main thread, one operation at a time.
The fake stamps when it received the end of the input and when it answered, so each
operation splits into the fake's own time and the rest: the relay's code, aiohttp and the
loopback hops (on a real network, the round trips to Aliyun come on top).

- ASR (Paraformer): U utterances of S seconds of speech-like PCM, fed in 60 ms frames as fast
  as the provider takes them; timed from finish() (the last audio and finish-task) to the
  final text. The fake answers `--result-ms` after finish-task.
- TTS (CosyVoice): N sentences; the fake waits `--first-ms` after finish-task, then streams
  the audio at `--pace` seconds of synthesis per second of audio (0.2: five times real
  time). Timed from the call to the first audio (stream()), and to the first frames a device
  is sent (Speaker.segments: the first HEAD_FRAMES frames encoded), the latter side by side
  with the same Speaker on the whole-sentence path (synthesize(), what a provider without
  stream() gets), alternating per sentence.
- CPU: the main thread's CPU time (the providers' side only) per second of audio streamed.

    python -m bench.dashscope [--utterances 50] [--sentences 50] [--seconds 2]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from asr_tts.asr.dashscope import DashScopeASR
from asr_tts.codec import FrameEncoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import Voice, VoiceList
from asr_tts.tts.dashscope import DashScopeTTS
from asr_tts.tts.speaker import Speaker
from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import envelope, percentile, progress, r
from protocol.audio_format import AudioFormat
from tests.asr_tts.fake_dashscope import PATH, FakeDashScope

SENTENCE = "今天的天气很好我们一起去公园散步吧"  # one segment: no comma to cut it at
FRAME = 1920  # 60 ms of 16 kHz s16le, as the listener feeds
GOAL_MS = 5.0  # relay-added p50 (the goal)


class _Whole:
    """The same provider without stream(): the Speaker's whole-sentence path."""

    name = "dashscope"

    def __init__(self, tts: DashScopeTTS) -> None:
        self._tts = tts

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        return await self._tts.synthesize(text, voice)

    async def voice_list(self) -> VoiceList:
        return await self._tts.voice_list()


def speech_like(seconds: float) -> bytes:
    n = int(16000 * seconds)
    return struct.pack(f"<{n}h", *(int(6000 * math.sin(i / 7.0)) for i in range(n)))


def start_fake(fake: FakeDashScope) -> tuple[int, Callable[[], None]]:
    """Serve `fake` on its own thread and loop; its port and a stop function."""
    ready: concurrent.futures.Future[int] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.set_result(runner.addresses[0][1])
        return runner

    def thread() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    worker = threading.Thread(target=thread, name="fake-dashscope", daemon=True)
    worker.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        worker.join(10)

    return ready.result(10), stop


Bench = Callable[[str, str, FakeDashScope, argparse.Namespace], Awaitable[Any]]


async def with_fake(fake: FakeDashScope, bench: Bench, args: argparse.Namespace) -> Any:
    """Run `bench` against `fake` served on its own thread."""
    port, stop = start_fake(fake)
    try:
        return await bench(f"ws://127.0.0.1:{port}{PATH}", fake.api_key, fake, args)
    finally:
        stop()


def summary(totals: list[float], own: list[float]) -> dict[str, float]:
    """p50/p90 in ms of the total, the fake's own time and their difference (per operation)."""
    added = sorted(t - o for t, o in zip(totals, own, strict=True))
    totals, own = sorted(totals), sorted(own)
    return {
        "n": len(totals),
        "total_p50_ms": r(percentile(totals, 50) * 1000),
        "fake_p50_ms": r(percentile(own, 50) * 1000),
        "added_p50_ms": r(percentile(added, 50) * 1000),
        "added_p90_ms": r(percentile(added, 90) * 1000),
    }


async def bench_asr(url: str, key: str, fake: FakeDashScope, args: argparse.Namespace) -> Any:
    pcm = speech_like(args.seconds)
    totals: list[float] = []
    cpu = 0.0
    async with aiohttp.ClientSession() as session:
        asr = DashScopeASR(api_key=key, session=session, url=url, timeout_s=10)
        for _ in range(args.utterances):
            cpu0 = time.thread_time()
            stream = await asr.open(language="zh")
            for i in range(0, len(pcm), FRAME):
                await stream.feed(pcm[i : i + FRAME])
            started = time.monotonic()
            text = await stream.finish()
            totals.append(time.monotonic() - started)
            cpu += time.thread_time() - cpu0
            assert text == fake.text, text
    wait_for_stamps(fake, args.utterances)
    own = [answered - ended for ended, answered in fake.stamps]
    audio_s = args.utterances * args.seconds
    return summary(totals, own) | {"cpu_ms_per_audio_s": r(cpu * 1000 / audio_s)}


def wait_for_stamps(fake: FakeDashScope, n: int) -> None:
    """The fake stamps after it answered: give its thread a bounded moment to catch up
    (blocking: the main loop has nothing else to do, the fake runs on its own)."""
    deadline = time.monotonic() + 5
    while len(fake.stamps) < n and time.monotonic() < deadline:
        time.sleep(0.001)


async def bench_tts(url: str, key: str, fake: FakeDashScope, args: argparse.Namespace) -> Any:
    voice = Voice()
    fmt = AudioFormat(sample_rate=24000)
    firsts: list[float] = []
    streamed: list[float] = []
    whole: list[float] = []
    cpu, audio_s = 0.0, 0.0
    async with aiohttp.ClientSession() as session:
        tts = DashScopeTTS(api_key=key, session=session, url=url, timeout_s=10)
        speakers = {
            "streamed": Speaker({"dashscope": tts}, "dashscope"),
            "whole": Speaker({"dashscope": _Whole(tts)}, "dashscope"),
        }

        async def first_audio(k: int) -> None:
            nonlocal cpu, audio_s
            cpu0 = time.thread_time()
            started = time.monotonic()
            async with contextlib.aclosing(tts.stream(SENTENCE, voice)) as chunks:
                async for chunk in chunks:
                    if len(firsts) == k:
                        firsts.append(time.monotonic() - started)
                    audio_s += chunk.duration_s
            cpu += time.thread_time() - cpu0

        async def first_frames(name: str) -> float:
            """Seconds to the first frames (the stream's closing not included)."""
            started = time.monotonic()
            segments = speakers[name].segments(SENTENCE, voice, FrameEncoder(fmt))
            async with contextlib.aclosing(segments) as it:
                await anext(it)
                return time.monotonic() - started

        for k in range(args.sentences):
            await first_audio(k)
            if k % 2:
                streamed.append(await first_frames("streamed"))
                whole.append(await first_frames("whole"))
            else:
                whole.append(await first_frames("whole"))
                streamed.append(await first_frames("streamed"))
    fake_own = [first - ended for ended, first in fake.stamps[0::3]]
    return {
        "first_audio": summary(firsts, fake_own),
        "first_frames_p50_ms": {
            "streamed": r(percentile(sorted(streamed), 50) * 1000),
            "whole_sentence": r(percentile(sorted(whole), 50) * 1000),
        },
        "cpu_ms_per_audio_s": r(cpu * 1000 / audio_s),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    params = {
        "utterances": args.utterances,
        "seconds": args.seconds,
        "sentences": args.sentences,
        "result_ms": args.result_ms,
        "first_ms": args.first_ms,
        "pace": args.pace,
        "sentence_chars": len(SENTENCE),
    }
    doc: dict[str, Any] = envelope("dashscope", params)
    asr_fake = FakeDashScope(result_delay_s=args.result_ms / 1000)
    tts_fake = FakeDashScope(first_delay_s=args.first_ms / 1000, pace=args.pace)
    progress(f"ASR: {args.utterances} utterances of {args.seconds} s")
    doc["asr"] = await with_fake(asr_fake, bench_asr, args)
    progress(f"TTS: {args.sentences} sentences, three ways each")
    doc["tts"] = await with_fake(tts_fake, bench_tts, args)
    added = {"asr": doc["asr"]["added_p50_ms"], "tts": doc["tts"]["first_audio"]["added_p50_ms"]}
    doc["goals"] = [
        {"goal": f"{kind} relay-added p50 <= {GOAL_MS} ms", "value": v, "pass": v <= GOAL_MS}
        for kind, v in added.items()
    ]
    return doc


def table(doc: dict[str, Any]) -> str:
    asr, tts = doc["asr"], doc["tts"]
    first = tts["first_audio"]
    frames = tts["first_frames_p50_ms"]
    lines = [
        f"ASR last audio -> final text: total p50 {asr['total_p50_ms']} ms, fake "
        f"{asr['fake_p50_ms']} ms, added p50 {asr['added_p50_ms']} ms (p90 "
        f"{asr['added_p90_ms']}); CPU {asr['cpu_ms_per_audio_s']} ms per audio second",
        f"TTS text -> first audio: total p50 {first['total_p50_ms']} ms, fake "
        f"{first['fake_p50_ms']} ms, added p50 {first['added_p50_ms']} ms (p90 "
        f"{first['added_p90_ms']}); CPU {tts['cpu_ms_per_audio_s']} ms per audio second",
        f"TTS text -> first device frames p50: streamed {frames['streamed']} ms, whole "
        f"sentence {frames['whole_sentence']} ms",
    ]
    return "\n".join(lines + goal_lines(doc["goals"]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("dashscope", __doc__)
    p.add_argument("--utterances", type=int, default=50)
    p.add_argument("--sentences", type=int, default=50)
    p.add_argument("--seconds", type=float, default=2.0, help="speech per utterance")
    p.add_argument("--result-ms", type=float, default=50.0, help="the fake's recognition time")
    p.add_argument("--first-ms", type=float, default=50.0, help="the fake's time to first audio")
    p.add_argument("--pace", type=float, default=0.2, help="synthesis s per audio s")
    args = p.parse_args(argv)
    at_least_one(p, args.utterances, args.sentences)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
