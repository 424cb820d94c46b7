"""Embedded speech recognition through the relay: accuracy and speech-end → stt latency,
Whisper base ("embedded") and pocketsphinx side by side.

For each provider the relay runs as a subprocess (`python -m relay serve --config
config.toml`, RELAY__ASR__PROVIDER set; no business service listens, so each turn ends with
an error after its `stt`) and a device client sends every utterance over the WebSocket as
the firmware does (Opus 16 kHz, 60 ms packets):

- real English: the recordings of Debian's `pocketsphinx-testdata` (LibriVox "Sense and
  Sensibility" and "cards"), with their transcriptions (`apt-get install
  pocketsphinx-testdata`; the set is skipped when it is not installed);
- synthetic English commands (espeak-ng), clean, with white noise at 10 dB SNR, and band
  limited to 8 kHz audio (telephone-like);
- synthetic Mandarin commands (espeak-ng through pinyin), the language named at the
  handshake (`?language=zh`) and left to auto-detection;
- 60 s of digital silence and 60 s of white noise (-20 dBFS): any word is invented.

These go push-to-talk (manual mode) at `--speed` times real time. Then the latency: a 2 s
English command in auto mode, in real time, `--turns` times on fresh connections; from the
moment the last packet holding speech was sent to `stt` (this includes the VAD's
`min_silence_s`, 0.6 s, before the relay knows the speech has ended; "after VAD" subtracts it).
With `--early-silence 0.2,0` the latency is measured side by side for each `[vad]
early_silence_s` (early recognition on, off), one relay each, their turns taking turns.

    python -m bench.asr_accuracy [--providers embedded,pocketsphinx] [--turns 10] [--speed 4]
        [--early-silence 0.2,0] [--latency-only]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from asr_tts.codec import pcm_from_wav, resample
from asr_tts.pcm import Pcm
from asr_tts.tts.base import Voice
from asr_tts.tts.espeak import MANDARIN_VOICE, to_pinyin
from asr_tts.tts.kokoro import KokoroTTS
from bench._cli import parser, run_main
from bench._common import (
    children,
    envelope,
    percentile,
    progress,
    r,
    rss_kib,
    spawned_children,
)
from bench._devices import voice_hello
from bench._peers import device_url, relay_env, start_relay
from bench._speech import FRAME_S, RATE, espeak, opus_packets, silence, trim

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
ENGLISH = (
    "turn on the light",
    "turn off the light",
    "what time is it",
    "please dance",
    "hello",
    "stop the music",
    "set a timer for five minutes",
    "what is the weather like today",
    "play some music",
    "turn up the volume",
)
MANDARIN = (
    "你好小智",
    "打开客厅的灯",
    "关灯",
    "现在几点了",
    "今天天气怎么样",
    "请跳舞",
    "播放音乐",
    "声音大一点",
)
LATENCY_PHRASE = "please turn on the light in the kitchen"  # ~2 s at 140 wpm
MIN_SILENCE_S = 0.6  # config.toml [vad] min_silence_s
_NUMBERS = {
    str(i): w
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}


# ---- the test set ------------------------------------------------------------------------


def real_english() -> list[tuple[str, bytes]]:
    """(transcription, 16 kHz PCM) of the pocketsphinx-testdata recordings; [] if absent."""
    items = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = TESTDATA / folder / listing
        if not path.is_file():
            return []
        for line in path.read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            if m:
                wav = (TESTDATA / folder / f"{m[2]}.wav").read_bytes()
                items.append((m[1].strip(), resample(pcm_from_wav(wav), RATE).samples))
    return items


def noisy(pcm: bytes, snr_db: float, seed: int) -> bytes:
    """`pcm` with white noise `snr_db` below its own power."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    power = float(np.mean(x**2)) or 1.0
    noise = np.random.default_rng(seed).standard_normal(x.size) * math.sqrt(
        power / 10.0 ** (snr_db / 10)
    )
    return np.clip(x + noise, -32768, 32767).astype("<i2").tobytes()


def band_limited(pcm: bytes) -> bytes:
    """`pcm` through 8 kHz audio and back (nothing above 4 kHz)."""
    down = resample(Pcm(pcm, RATE), 8000)
    up: bytes = resample(down, RATE).samples
    return up


def white_noise(seconds: float, dbfs: float, seed: int = 7) -> bytes:
    x = np.random.default_rng(seed).standard_normal(round(seconds * RATE))
    return np.clip(x * 32768 * math.pow(10.0, dbfs / 20), -32768, 32767).astype("<i2").tobytes()


async def kokoro_voice(phrases: Sequence[str]) -> list[tuple[str, bytes]]:
    """`phrases` spoken by the relay's embedded Kokoro voice (default voices), at 16 kHz."""
    tts = KokoroTTS()
    try:
        out = []
        for p in phrases:
            pcm = await tts.synthesize(p, Voice())
            out.append((p, trim(resample(pcm, RATE).samples) + silence(0.3)))
        return out
    finally:
        tts.close()


async def test_set(voice: str) -> dict[str, list[tuple[str, bytes]]]:
    """Every set: name -> [(expected text, PCM)]; the synthetic ones in `voice`."""
    if voice == "kokoro":
        en, zh = await kokoro_voice(ENGLISH), await kokoro_voice(MANDARIN)
    else:
        en = [(p, trim(espeak(p)) + silence(0.3)) for p in ENGLISH]
        zh = [(p, trim(espeak(to_pinyin(p), MANDARIN_VOICE)) + silence(0.3)) for p in MANDARIN]
    return {
        "real_en": real_english(),
        "synth_en": en,
        "synth_en_noise10db": [(t, noisy(p, 10, i)) for i, (t, p) in enumerate(en)],
        "synth_en_8khz": [(t, band_limited(p)) for t, p in en],
        "synth_zh": zh,
        "synth_zh_auto": zh,
        "silence_60s": [("", silence(60.0))],
        "noise_60s": [("", white_noise(60.0, -20))],
    }


# ---- scoring -----------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower case, punctuation off, digits 0-10 as words."""
    return [_NUMBERS.get(w, w) for w in re.sub(r"[^\w\s']", " ", text.lower()).split()]


def distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[len(b)]


def error_rate(pairs: list[tuple[str, str]], chinese: bool) -> dict[str, Any]:
    """WER (CER for Mandarin) over the set; for sets with nothing to hear, words invented."""
    units = [
        ([c for c in re.sub(r"[\W_]", "", e)], [c for c in re.sub(r"[\W_]", "", g)])
        if chinese
        else (words(e), words(g))
        for e, g in pairs
    ]
    total = sum(len(e) for e, _ in units)
    if total == 0:
        return {"invented_words": sum(len(g) for _, g in units)}
    errors = sum(distance(e, g) for e, g in units)
    return {"cer" if chinese else "wer": r(errors / total, 4), "units": total}


# ---- the device --------------------------------------------------------------------------


async def connect(
    http: aiohttp.ClientSession, url: str, idx: int
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    headers = {"Device-Id": f"02:7B:00:00:{idx >> 8:02X}:{idx & 255:02X}", "Protocol-Version": "1"}
    ws = await http.ws_connect(url, headers=headers)
    await ws.send_str(voice_hello().decode())
    async with asyncio.timeout(10):
        hello = orjson.loads((await ws.receive()).data)
    return ws, str(hello["session_id"])


async def send_packets(
    ws: aiohttp.ClientWebSocketResponse, packets: list[bytes], speed: float
) -> float:
    """Paced at `speed` × real time; returns when the last one was sent (perf_counter)."""
    start = time.perf_counter()
    for i, packet in enumerate(packets):
        if (delay := start + i * FRAME_S / speed - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await ws.send_bytes(packet)
    return time.perf_counter()


async def next_stt(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 120
) -> tuple[str, float]:
    """The next `stt` text and when it came; later messages of the turn are read by the next
    call (each turn ends with `tts stop`)."""
    async with asyncio.timeout(timeout_s):
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            m = orjson.loads(msg.data)
            if m.get("type") == "stt":
                return str(m.get("text", "")), time.perf_counter()
    raise RuntimeError("the connection closed before stt")


async def until_stop(ws: aiohttp.ClientWebSocketResponse) -> None:
    async with asyncio.timeout(30):
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and '"stop"' in msg.data:
                return


async def push_to_talk(
    ws: aiohttp.ClientWebSocketResponse, sid: str, pcm: bytes, speed: float
) -> str:
    def listen(state: str) -> str:
        return orjson.dumps(
            {"session_id": sid, "type": "listen", "state": state, "mode": "manual"}
        ).decode()

    await ws.send_str(listen("start"))
    await send_packets(ws, opus_packets(pcm), speed)
    await ws.send_str(listen("stop"))
    text, _ = await next_stt(ws)
    await until_stop(ws)
    return text


async def warm_up(http: aiohttp.ClientSession, port: int) -> None:
    """The relay loads its first decoder at start: wait for it, or the first utterance waits
    in the listener's backlog (100 packets) and, sent faster than real time, overflows it."""
    ws, sid = await connect(http, device_url(port), 999)
    await push_to_talk(ws, sid, silence(0.3), 1)
    await ws.close()


async def accuracy(
    http: aiohttp.ClientSession, port: int, sets: dict[str, list[tuple[str, bytes]]], speed: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for idx, (name, items) in enumerate(sets.items()):
        if not items:
            out[name] = {"skipped": "pocketsphinx-testdata is not installed"}
            continue
        url = device_url(port) + ("?language=zh" if name == "synth_zh" else "")
        ws, sid = await connect(http, url, idx)
        pairs = []
        decodes, dropped = await audio_counts(http, port)
        for expected, pcm in items:
            got = await push_to_talk(ws, sid, pcm, speed)
            pairs.append((expected, got))
        await ws.close()
        decodes_after, dropped_after = await audio_counts(http, port)
        out[name] = {
            **error_rate(pairs, name.startswith("synth_zh")),
            "audio_s": r(sum(len(pcm) for _, pcm in items) / (2 * RATE), 1),
            "decodes": decodes_after - decodes,  # a long utterance is cut and decoded in pieces
            "uplink_dropped": dropped_after - dropped,  # packets the listener's backlog refused
            "heard": pairs,
        }
        progress(f"  {name}: {out[name]}")
    return out


async def latency_turn(
    http: aiohttp.ClientSession, port: int, idx: int, packets: list[bytes], last_speech: int
) -> tuple[float, str]:
    """One turn on a fresh connection: (seconds from the last speech packet to stt, text)."""
    ws, sid = await connect(http, device_url(port), idx)
    start = {"session_id": sid, "type": "listen", "state": "start", "mode": "auto"}
    await ws.send_str(orjson.dumps(start).decode())
    stt: asyncio.Task[tuple[str, float]] = asyncio.ensure_future(next_stt(ws))
    sent_end = await send_packets(ws, packets[: last_speech + 1], 1.0)
    sender = asyncio.ensure_future(send_packets(ws, packets[last_speech + 1 :], 1.0))
    text, at = await stt
    sender.cancel()
    await ws.close()
    return at - sent_end, text


async def latency(
    http: aiohttp.ClientSession, ports: dict[float, int], turns: int
) -> list[dict[str, Any]]:
    """Speech end -> stt, auto mode, real time, one fresh connection per turn; for each
    early_silence_s (a relay each), their turns interleaved so that they share the load."""
    speech = trim(espeak(LATENCY_PHRASE))
    packets = opus_packets(silence(0.6) + speech + silence(3.0))
    last_speech = (round(0.6 / FRAME_S) * 2 * 960 + len(speech) - 1) // (2 * 960)
    seconds: dict[float, list[float]] = {early: [] for early in ports}
    texts: dict[float, list[str]] = {early: [] for early in ports}
    for i in range(turns):
        for early, port in ports.items():
            s, text = await latency_turn(http, port, 1000 + i, packets, last_speech)
            seconds[early].append(s)
            texts[early].append(text)
    return [
        {
            **latency_summary(early, sorted(seconds[early]), texts[early], len(speech)),
            "early_recognitions": await early_counts(http, port),
        }
        for early, port in ports.items()
    ]


async def early_counts(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """relay_asr_early_total by outcome (hit, miss), from the relay's /metrics."""
    return await samples(http, port, "relay_asr_early", "_total", "outcome")


async def samples(
    http: aiohttp.ClientSession, port: int, family: str, suffix: str, label: str
) -> dict[str, float]:
    """A metric family's `suffix` samples from the relay's /metrics, by one label's value."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for sample in fam.samples:
                if sample.name.endswith(suffix):
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
    return out


async def audio_counts(http: aiohttp.ClientSession, port: int) -> tuple[float, float]:
    """(utterances decoded, uplink packets dropped) so far: what a set's audio came to."""
    decodes = await samples(http, port, "relay_asr_seconds", "_count", "provider")
    dropped = await samples(http, port, "relay_audio_dropped", "_total", "reason")
    return sum(decodes.values()), sum(dropped.values())


def latency_summary(
    early: float, seconds: list[float], texts: list[str], speech_bytes: int
) -> dict[str, Any]:
    """The figures of one early_silence_s setting; `seconds` sorted."""
    return {
        "early_silence_s": early,
        "phrase": LATENCY_PHRASE,
        "speech_s": r(speech_bytes / (2 * RATE), 2),
        "turns": len(seconds),
        "p50_ms": r(percentile(seconds, 50) * 1000, 0),
        "p90_ms": r(percentile(seconds, 90) * 1000, 0),
        "after_vad_p50_ms": r((percentile(seconds, 50) - MIN_SILENCE_S) * 1000, 0),
        "after_vad_p90_ms": r((percentile(seconds, 90) - MIN_SILENCE_S) * 1000, 0),
        "heard": sorted(set(texts)),
    }


def worker_rss_mib(relay_pid: int) -> list[float]:
    """Resident memory of the relay's decoder processes."""
    rss = [rss_kib(pid) for pid in spawned_children(relay_pid)]
    return [r(kib / 1024, 0) for kib in rss if kib > 20_000]  # not multiprocessing's helper


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sets = {}
    if not args.latency_only:
        progress(f"synthesising the test set ({args.voice})")
        sets = await test_set(args.voice)
    results: dict[str, Any] = {}
    early_values = [float(v) for v in args.early_silence.split(",")]
    for provider in args.providers.split(","):
        progress(f"{provider}:")
        with children() as started:
            ports = {}
            for early in early_values:
                env = {
                    **relay_env(),
                    "RELAY__ASR__PROVIDER": provider,
                    "RELAY__VAD__EARLY_SILENCE_S": str(early),
                }
                _relay, ports[early] = start_relay(started, f"relay-{provider}-{early}", env)
            first_relay, first_port = started[0], ports[early_values[0]]
            async with aiohttp.ClientSession() as http:
                for port in ports.values():
                    await warm_up(http, port)
                acc = {}
                if not args.latency_only:
                    acc = await accuracy(http, first_port, sets, args.speed)
                lat = await latency(http, ports, args.turns)
            rss = worker_rss_mib(first_relay.pid)
        results[provider] = {"accuracy": acc, "latency": lat, "worker_rss_mib": rss}
        progress(f"  latency: {lat}, worker RSS MiB {rss}")
    doc = envelope(
        "asr_accuracy",
        {
            "providers": args.providers,
            "turns": args.turns,
            "speed": args.speed,
            "voice": args.voice,
            "early_silence": args.early_silence,
            "latency_only": args.latency_only,
        },
    )
    doc["results"] = results
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = []
    for provider, res in doc["results"].items():
        lines.append(f"== {provider} (decoder RSS MiB: {res['worker_rss_mib']})")
        for name, acc in res["accuracy"].items():
            figures = {k: v for k, v in acc.items() if k != "heard"}
            lines.append(f"  {name:22} {figures}")
        for lat in res["latency"]:
            lines.append(
                f"  early_silence_s {lat['early_silence_s']}: speech end -> stt: p50 "
                f"{lat['p50_ms']} ms, p90 {lat['p90_ms']} ms (after the VAD's {MIN_SILENCE_S} s: "
                f"p50 {lat['after_vad_p50_ms']}, p90 {lat['after_vad_p90_ms']}); early "
                f"recognitions {lat['early_recognitions']}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("asr_accuracy", __doc__)
    p.add_argument("--providers", default="embedded,pocketsphinx")
    p.add_argument("--turns", type=int, default=10, help="latency turns per provider")
    p.add_argument("--speed", type=float, default=4.0, help="push-to-talk pace, × real time")
    p.add_argument(
        "--voice",
        choices=("espeak", "kokoro"),
        default="espeak",
        help="who speaks the synthetic sets: espeak-ng, or the relay's embedded Kokoro voice",
    )
    p.add_argument(
        "--early-silence",
        default="0.2",
        help="[vad] early_silence_s of the latency relays, comma-separated (0: early "
        "recognition off), measured side by side",
    )
    p.add_argument("--latency-only", action="store_true", help="skip the accuracy sets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
