"""What the Aliyun NLS providers add to the vendor's own time, through the local fake gateway.

The fake (tests/asr_tts/fake_aliyun_nls.py) runs in its own process on a free loopback port.
Two clients talk to it, interleaved repetition by repetition so that both see the same noise:

- provider: `AliyunASR` / `AliyunTTS` as the relay uses them (token from `NLSTokens`, cached);
- bare: the same exchange written out by hand on the same aiohttp session, with the same
  token: no provider code, no checks. What the fake and loopback cost is in both; the
  difference of the medians is what the providers add.

Measured per repetition:

- asr_open: connect, StartTranscription, until TranscriptionStarted;
- asr_final: from the last audio handed over (finish() called / StopTranscription sent) to the
  text (TranscriptionCompleted read) -- the relay's "speech end to stt" share;
- tts: from the text to the sentence's PCM in hand, and tts_first to its first audio chunk
  (the provider's `stream()`, what the Speaker plays first);
- CPU: this process's CPU time while streaming the utterances, per second of audio.

    python -m bench.nls [--reps 200] [--audio-s 1.0]

stdout: one JSON document; stderr: progress, then a table.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from asr_tts.asr.aliyun import AliyunASR
from asr_tts.nls_token import NLSTokens
from asr_tts.tts.aliyun import AliyunTTS
from asr_tts.tts.base import Voice
from bench._cli import Doc, at_least_one, goal_lines, parser, run_main
from bench._common import (
    PYTHON,
    children,
    envelope,
    free_port,
    median,
    percentile,
    progress,
    r,
    start_child,
    wait_tcp,
)

KEY_ID, KEY_SECRET, APPKEY = "LTAI-bench", "bench-secret", "bench-appkey"
CHUNK = 1920  # 60 ms of 16 kHz s16le, as the relay feeds a recogniser
PACKET = 3200  # 100 ms, what the provider sends per frame
SENTENCE = "今天天气很好，我们出去走走吧。"
GOAL_MS = 5.0


def speech(seconds: float) -> bytes:
    """A tone standing in for speech: the fake does not listen."""
    n = int(16000 * seconds)
    return struct.pack(f"<{n}h", *(int(6000 * math.sin(i / 7)) for i in range(n)))


def header(name: str, task_id: str) -> dict[str, str]:
    """A client header, by hand."""
    return {
        "message_id": uuid.uuid4().hex,
        "task_id": task_id,
        "namespace": "SpeechTranscriber",
        "name": name,
        "appkey": APPKEY,
    }


async def bare_asr(
    session: aiohttp.ClientSession, url: str, token: str, pcm: bytes
) -> tuple[float, float]:
    """One utterance by hand: (open seconds, stop to completed seconds)."""
    t0 = time.perf_counter()
    async with session.ws_connect(url, headers={"X-NLS-Token": token}) as ws:
        task_id = uuid.uuid4().hex
        start = {
            "header": header("StartTranscription", task_id),
            "payload": {"format": "pcm", "sample_rate": 16000},
        }
        await ws.send_str(orjson.dumps(start).decode())
        while orjson.loads((await ws.receive()).data)["header"]["name"] != "TranscriptionStarted":
            pass
        opened = time.perf_counter() - t0
        for i in range(0, len(pcm), PACKET):
            await ws.send_bytes(pcm[i : i + PACKET])
        t1 = time.perf_counter()
        await ws.send_str(orjson.dumps({"header": header("StopTranscription", task_id)}).decode())
        while orjson.loads((await ws.receive()).data)["header"]["name"] != "TranscriptionCompleted":
            pass
        return opened, time.perf_counter() - t1


async def provider_asr(asr: AliyunASR, pcm: bytes) -> tuple[float, float]:
    """One utterance through the provider: (open seconds, finish() seconds)."""
    t0 = time.perf_counter()
    stream = await asr.open()
    opened = time.perf_counter() - t0
    for i in range(0, len(pcm), CHUNK):
        await stream.feed(pcm[i : i + CHUNK])
    t1 = time.perf_counter()
    text = await stream.finish()
    assert text, "no text from the fake"
    return opened, time.perf_counter() - t1


async def bare_tts(session: aiohttp.ClientSession, url: str, token: str) -> tuple[float, float]:
    """One sentence by hand: (first chunk seconds, whole sentence seconds)."""
    body = {
        "appkey": APPKEY,
        "token": token,
        "text": SENTENCE,
        "format": "pcm",
        "sample_rate": 16000,
        "voice": "xiaoyun",
        "volume": 50,
        "speech_rate": 0,
        "pitch_rate": 0,
    }
    t0 = time.perf_counter()
    first = 0.0
    async with session.post(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    ) as resp:
        async for _chunk in resp.content.iter_any():
            first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0


async def provider_tts(tts: AliyunTTS) -> tuple[float, float]:
    """One sentence through the provider's stream: (first chunk seconds, whole sentence
    seconds)."""
    t0 = time.perf_counter()
    first = 0.0
    async for chunk in tts.stream(SENTENCE, Voice()):
        assert chunk.samples
        first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0


async def timed_cpu(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """`work`'s result and the CPU seconds this process spent on it."""
    c0 = time.process_time()  # nanosecond clock: os.times() counts 10 ms ticks
    result = await work()
    return result, time.process_time() - c0


def summary(values: list[float]) -> dict[str, float]:
    """p50 and p90 in ms."""
    s = sorted(values)
    return {"p50_ms": r(percentile(s, 50) * 1000), "p90_ms": r(percentile(s, 90) * 1000)}


async def one_round(
    asr: AliyunASR,
    tts: AliyunTTS,
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    pcm: bytes,
    provider_first: bool,
) -> dict[str, float]:
    """One repetition of each exchange by each client; who goes first alternates."""
    ws_url, tts_url = f"ws://{base}/ws/v1", f"http://{base}/stream/v1/tts"
    out: dict[str, float] = {}

    async def by_provider() -> None:
        (out["p_open"], out["p_final"]), out["p_cpu"] = await timed_cpu(
            lambda: provider_asr(asr, pcm)
        )
        out["p_tts_first"], out["p_tts"] = await provider_tts(tts)

    async def by_hand() -> None:
        (out["b_open"], out["b_final"]), out["b_cpu"] = await timed_cpu(
            lambda: bare_asr(session, ws_url, token, pcm)
        )
        out["b_tts_first"], out["b_tts"] = await bare_tts(session, tts_url, token)

    for step in (by_provider, by_hand) if provider_first else (by_hand, by_provider):
        await step()
    return out


def results(rounds: list[dict[str, float]], audio_s: float) -> Doc:
    """Percentiles per client, the providers' added p50, CPU per audio second, the goals."""
    got = {k: [one[k] for one in rounds] for k in rounds[0]}
    added = {
        "asr_open_ms": r((median(got["p_open"]) - median(got["b_open"])) * 1000),
        "asr_final_ms": r((median(got["p_final"]) - median(got["b_final"])) * 1000),
        "tts_ms": r((median(got["p_tts"]) - median(got["b_tts"])) * 1000),
        "tts_first_ms": r((median(got["p_tts_first"]) - median(got["b_tts_first"])) * 1000),
    }
    audio_total = audio_s * len(rounds)
    return {
        "provider": {k: summary(got[f"p_{k}"]) for k in ("open", "final", "tts", "tts_first")},
        "bare": {k: summary(got[f"b_{k}"]) for k in ("open", "final", "tts", "tts_first")},
        "added_p50": added,
        "cpu_ms_per_audio_s": {
            "provider": r(sum(got["p_cpu"]) / audio_total * 1000),
            "bare": r(sum(got["b_cpu"]) / audio_total * 1000),
        },
        "goals": [
            {
                "goal": f"provider adds <= {GOAL_MS} ms p50 ({name})",
                "value": f"{value} ms",
                "pass": value <= GOAL_MS,
            }
            for name, value in added.items()
        ],
    }


async def measure(base: str, reps: int, audio_s: float) -> Doc:
    """The interleaved repetitions, after 5 uncounted warm-up rounds."""
    pcm = speech(audio_s)
    rounds: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as session:
        tokens = NLSTokens(
            access_key_id=KEY_ID,
            access_key_secret=KEY_SECRET,
            session=session,
            url=f"http://{base}/",
        )
        asr = AliyunASR(appkey=APPKEY, tokens=tokens, session=session, url=f"ws://{base}/ws/v1")
        tts = AliyunTTS(
            appkey=APPKEY, tokens=tokens, session=session, url=f"http://{base}/stream/v1/tts"
        )
        token = await tokens.get()
        for i in range(reps + 5):
            one = await one_round(asr, tts, session, base, token, pcm, provider_first=i % 2 == 0)
            if i >= 5:
                rounds.append(one)
            if i >= 5 and (i - 5) % 50 == 49:
                progress(f"{i - 4}/{reps}")
    return results(rounds, audio_s)


async def run(args: argparse.Namespace) -> Doc:
    doc = envelope("nls", {"reps": args.reps, "audio_s": args.audio_s})
    port = free_port()
    with children() as started:
        fake = start_child(
            "nls-fake",
            [
                PYTHON,
                "-m",
                "tests.asr_tts.fake_aliyun_nls",
                "--port",
                str(port),
                "--access-key-id",
                KEY_ID,
                "--access-key-secret",
                KEY_SECRET,
                "--appkey",
                APPKEY,
            ],
        )
        started.append(fake)
        wait_tcp(fake, port)
        progress(f"fake NLS on port {port}; {args.reps} repetitions")
        doc["results"] = await measure(f"127.0.0.1:{port}", args.reps, args.audio_s)
    doc["loadavg_at_end"] = list(os.getloadavg())
    return doc


def table(doc: Doc) -> str:
    res = doc["results"]
    lines = [f"{'':22} {'provider p50':>13} {'bare p50':>10} {'added':>8}"]
    for key, added in (
        ("open", "asr_open_ms"),
        ("final", "asr_final_ms"),
        ("tts", "tts_ms"),
        ("tts_first", "tts_first_ms"),
    ):
        provider, bare = res["provider"][key]["p50_ms"], res["bare"][key]["p50_ms"]
        lines.append(
            f"{added[:-3]:22} {provider:>11} ms {bare:>7} ms {res['added_p50'][added]:>5} ms"
        )
    lines.append(f"CPU ms per audio second: {res['cpu_ms_per_audio_s']}")
    lines.append(
        f"load average: start {doc['machine']['loadavg_at_start']}, end {doc['loadavg_at_end']}"
    )
    return "\n".join([*lines, *goal_lines(res["goals"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("nls", __doc__)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--audio-s", type=float, default=1.0)
    args = p.parse_args(argv)
    at_least_one(p, args.reps)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
