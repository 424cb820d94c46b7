"""The "tencent" speech providers' own latency and CPU, through the Tencent fakes.

The fakes of tests/asr_tts/fake_tencent.py (the real-time ASR WebSocket and TextToVoice, each
checking signatures and parameters as the documents describe) run in a child process, so
this process's CPU is the client's alone. Each turn, side by side in one run:

- ASR: an utterance of --audio-s seconds of PCM fed in 60 ms frames (the relay's window) to
  `TencentASR`, then the time from the last audio to the final text (`finish()`): the
  provider's figure. The baseline is the least a client can do on the same wire: one aiohttp
  WebSocket to the same signed URL, the same audio as 40 ms binary messages, `{"type":
  "end"}`, and reading until `final: 1`. The fake records its own time from the end message
  to the final message; "added" is the client's wait minus that.
- TTS: one sentence to `TencentTTS.synthesize()` (the whole answer is the first audio: the
  API is not streamed), and to `Speaker` up to its first Opus frame (resampled to 24 kHz and
  encoded, as a device gets it; measured after the others, as its encoder thread outlives
  the first frame); the baseline is a bare signed aiohttp POST and base64 decode.
  The fake records its own time from the request read to the answer ready.
- CPU: this process's CPU time per second of audio streamed through `TencentASR`, and per
  sentence synthesised through `TencentTTS`, against the baselines.

    python -m bench.tencent_speech [--turns 60] [--audio-s 2.0] [--port 0]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from asr_tts.asr.tencent import TencentASR
from asr_tts.codec import FrameEncoder
from asr_tts.tencent_sign import tc3_authorization
from asr_tts.tts.base import Voice
from asr_tts.tts.speaker import Speaker
from asr_tts.tts.tencent import CONTENT_TYPE, TencentTTS
from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import (
    PYTHON,
    children,
    envelope,
    free_port,
    median,
    progress,
    r,
    start_child,
    wait_http_ok,
)
from protocol.audio_format import AudioFormat
from tests.asr_tts.fake_tencent import (
    APPID,
    ASR_PATH,
    SECRET_ID,
    SECRET_KEY,
    FakeTencentASR,
    FakeTencentTTS,
)

SENTENCE = "今天天气晴朗，适合出门散步。"
FRAME = 1920  # 60 ms of 16 kHz s16le, as the listener feeds
PACKET = 1280  # 40 ms, what the document recommends per message
WARMUP = 3
GOAL_MS = 5.0


def serve(port: int) -> None:
    """The child: both fakes and GET /_timings (their own times, in call order)."""
    asr, tts = FakeTencentASR(), FakeTencentTTS()

    async def timings(_request: web.Request) -> web.Response:
        return web.json_response({"asr": asr.timings, "tts": tts.timings})

    app = web.Application()
    app.router.add_get(ASR_PATH, asr.handle)
    app.router.add_post("/", tts.tts)
    app.router.add_get("/_timings", timings)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def speech(seconds: float) -> bytes:
    """Distinct non-silent samples."""
    n = int(16000 * seconds)
    return b"".join(((i * 37) % 20000 - 10000).to_bytes(2, "little", signed=True) for i in range(n))


async def provider_asr(asr: TencentASR, pcm: bytes) -> tuple[float, float]:
    """(last audio -> final text, CPU seconds) through TencentASR."""
    cpu = time.process_time()
    stream = await asr.open()
    for i in range(0, len(pcm), FRAME):
        await stream.feed(pcm[i : i + FRAME])
    t0 = time.perf_counter()
    await stream.finish()
    return time.perf_counter() - t0, time.process_time() - cpu


async def bare_asr(
    asr: TencentASR, session: aiohttp.ClientSession, pcm: bytes
) -> tuple[float, float]:
    """(last audio -> final text, CPU seconds) with a bare aiohttp WebSocket client."""
    cpu = time.process_time()
    url = asr.signed_url(None, int(time.time()), 12345, str(uuid.uuid4()))
    async with session.ws_connect(url) as ws:
        await ws.receive()  # the handshake answer
        for i in range(0, len(pcm), PACKET):
            await ws.send_bytes(pcm[i : i + PACKET])
        t0 = time.perf_counter()
        await ws.send_str('{"type": "end"}')
        async for msg in ws:
            if orjson.loads(msg.data).get("final") == 1:
                break
        waited = time.perf_counter() - t0
    return waited, time.process_time() - cpu


async def provider_tts(tts: TencentTTS) -> tuple[float, float]:
    """(text -> audio, CPU seconds) through TencentTTS."""
    cpu, t0 = time.process_time(), time.perf_counter()
    await tts.synthesize(SENTENCE, Voice())
    return time.perf_counter() - t0, time.process_time() - cpu


async def speaker_tts(speaker: Speaker, encoder: FrameEncoder) -> tuple[float, float]:
    """(text -> first Opus frame, CPU seconds) through Speaker and TencentTTS."""
    cpu, t0 = time.process_time(), time.perf_counter()
    segments = speaker.segments(SENTENCE, Voice(provider="tencent"), encoder)
    async for _sentence, part, _whole in segments:
        if part:
            break
    waited = time.perf_counter() - t0
    await segments.aclose()
    return waited, time.process_time() - cpu


async def bare_tts(session: aiohttp.ClientSession, url: str, host: str) -> tuple[float, float]:
    """(text -> audio, CPU seconds) with a bare signed POST."""
    cpu, t0 = time.process_time(), time.perf_counter()
    body = orjson.dumps(
        {
            "Text": SENTENCE,
            "SessionId": str(uuid.uuid4()),
            "VoiceType": 101001,
            "Codec": "pcm",
            "SampleRate": 16000,
            "Speed": 0.0,
            "Volume": 0.0,
        }
    )
    stamp = int(time.time())
    auth = tc3_authorization(
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        service="tts",
        host=host,
        content_type=CONTENT_TYPE,
        payload=body,
        timestamp=stamp,
    )
    headers = {
        "Authorization": auth,
        "Content-Type": CONTENT_TYPE,
        "Host": host,
        "X-TC-Action": "TextToVoice",
        "X-TC-Version": "2019-08-23",
        "X-TC-Timestamp": str(stamp),
        "X-TC-Region": "ap-guangzhou",
    }
    async with session.post(url, data=body, headers=headers) as resp:
        base64.b64decode(orjson.loads(await resp.read())["Response"]["Audio"])
    return time.perf_counter() - t0, time.process_time() - cpu


Case = Callable[[], Awaitable[tuple[float, float]]]


async def measure(
    cases: dict[str, Case], turns: int, calls: list[str]
) -> dict[str, list[tuple[float, float]]]:
    """Every case once per turn, in an order rotated each turn (none always follows an idle
    gap), after WARMUP unrecorded turns; `calls` gets every case's name in call order."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    names = list(cases)
    for turn in range(WARMUP + turns):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            result = await cases[name]()
            calls.append(name if turn >= WARMUP else "")
            if turn >= WARMUP:
                out[name].append(result)
    return out


def own_times(calls: list[str], own: list[float]) -> dict[str, list[float]]:
    """The fake's own times per case, from the call order (one fake answer per call)."""
    out: dict[str, list[float]] = {}
    for name, seconds in zip(calls, own, strict=True):
        if name:
            out.setdefault(name, []).append(seconds)
    return out


def summary(values: list[float], own: list[float]) -> dict[str, float]:
    """p50 of the wait, of the fake's own time, and of their difference, in ms."""
    return {
        "p50_ms": r(median(values) * 1000),
        "fake_own_p50_ms": r(median(own) * 1000),
        "added_p50_ms": r(median([v - o for v, o in zip(values, own, strict=True)]) * 1000),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the fakes, measure, read the fakes' own times."""
    doc = envelope("tencent_speech", {"turns": args.turns, "audio_s": args.audio_s})
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    pcm = speech(args.audio_s)
    with children() as started, concurrent.futures.ThreadPoolExecutor(1) as executor:
        serve_args = ["-m", "bench.tencent_speech", "--serve", "--port", str(port)]
        child = start_child("tencent_fakes", [PYTHON, *serve_args])
        started.append(child)
        wait_http_ok(child, f"{base}/_timings")
        async with aiohttp.ClientSession() as session:
            asr = TencentASR(
                appid=APPID,
                secret_id=SECRET_ID,
                secret_key=SECRET_KEY,
                session=session,
                url=f"ws://127.0.0.1:{port}/asr/v2",
            )
            tts = TencentTTS(
                secret_id=SECRET_ID, secret_key=SECRET_KEY, session=session, url=f"{base}/"
            )
            speaker = Speaker({"tencent": tts}, "tencent", executor, first_max_chars=None)
            encoder = FrameEncoder(AudioFormat(sample_rate=24000))
            host = f"127.0.0.1:{port}"
            progress(f"{args.turns} turns, {args.audio_s} s of audio each")
            asr_calls: list[str] = []
            tts_calls: list[str] = []
            asr_runs = await measure(
                {
                    "provider": lambda: provider_asr(asr, pcm),
                    "bare": lambda: bare_asr(asr, session, pcm),
                },
                args.turns,
                asr_calls,
            )
            tts_runs = await measure(
                {
                    "provider": lambda: provider_tts(tts),
                    "bare": lambda: bare_tts(session, f"{base}/", host),
                },
                args.turns,
                tts_calls,
            )
            # Apart: the Speaker keeps encoding in its executor thread after the first frame,
            # which would slow whichever call came next.
            tts_runs |= await measure(
                {"speaker_first_frame": lambda: speaker_tts(speaker, encoder)},
                args.turns,
                tts_calls,
            )
            async with session.get(f"{base}/_timings") as resp:
                own = await resp.json()
    own_asr, own_tts = own_times(asr_calls, own["asr"]), own_times(tts_calls, own["tts"])
    doc["results"] = results(asr_runs, tts_runs, own_asr, own_tts, args.audio_s)
    doc["goals"] = goals(doc["results"])
    doc["loadavg_at_end"] = list(os.getloadavg())
    return doc


def results(
    asr_runs: dict[str, list[tuple[float, float]]],
    tts_runs: dict[str, list[tuple[float, float]]],
    own_asr: dict[str, list[float]],
    own_tts: dict[str, list[float]],
    audio_s: float,
) -> dict[str, Any]:
    """The figures: waits, the fakes' own times, added latency, CPU."""
    out: dict[str, Any] = {"asr": {}, "tts": {}}
    for name, runs in asr_runs.items():
        out["asr"][name] = summary([w for w, _ in runs], own_asr[name]) | {
            "cpu_ms_per_audio_s": r(median([c for _, c in runs]) * 1000 / audio_s)
        }
    for name, runs in tts_runs.items():
        out["tts"][name] = summary([w for w, _ in runs], own_tts[name]) | {
            "cpu_ms_per_sentence": r(median([c for _, c in runs]) * 1000)
        }
    return out


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goal: at most 5 ms p50 added by the relay's code to the fake's own time."""
    picks = [("asr", "provider"), ("tts", "provider")]
    return [
        {
            "goal": f"{kind} {name} added p50 <= {GOAL_MS} ms",
            "value": res[kind][name]["added_p50_ms"],
            "pass": res[kind][name]["added_p50_ms"] <= GOAL_MS,
        }
        for kind, name in picks
    ]


def table(doc: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = [f"{'case':32} {'p50 ms':>8} {'fake ms':>8} {'added ms':>9} {'cpu ms':>8}"]
    for kind, cases in doc["results"].items():
        for name, f in cases.items():
            cpu = f.get("cpu_ms_per_audio_s", f.get("cpu_ms_per_sentence"))
            lines.append(
                f"{kind + ' ' + name:32} {f['p50_ms']:8.2f} {f['fake_own_p50_ms']:8.2f} "
                f"{f['added_p50_ms']:9.2f} {cpu:8.2f}"
            )
    return "\n".join([*lines, *goal_lines(doc["goals"])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = parser("tencent_speech", __doc__)
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("--audio-s", type=float, default=2.0)
    p.add_argument("--port", type=int, default=0, help="the fakes' port (0: a free one)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    at_least_one(p, args.turns)
    if not 0.2 <= args.audio_s <= 2.5:
        p.error("--audio-s: 0.2 to 2.5 (the fake refuses over 3 s of audio a second)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or (--serve) the fakes."""
    args = parse_args(argv)
    if args.serve:
        serve(args.port)
        return 0
    return run_main(run, table, args)


if __name__ == "__main__":
    sys.exit(main())
