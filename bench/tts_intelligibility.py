"""Intelligibility of the relay's voices: what Whisper base hears of them, through the relay.

20 English and 20 Mandarin smart-toy phrases (ENGLISH, MANDARIN below) are spoken by a relay
(`python -m relay serve --config config.toml`, `[tts] provider = "embedded"`, no cache) to a
device over its WebSocket: `POST /api/v1/devices/{id}/messages` with `{"speak": phrase,
"voice": …}`, the Opus downlink (24 kHz, 60 ms) read to `tts stop` and decoded. That audio is
then said, as a device would say it (Opus 16 kHz, 60 ms packets, push-to-talk, the language
named at the handshake), to a second relay whose recogniser is the embedded Whisper base: its
`stt` is what was understood. Scored as bench.asr_accuracy scores: WER for English, CER for
Mandarin. Every set is spoken and judged in the same run, phrase by phrase in turn, so that all
see the same load:

- English by Kokoro with each English G2P of `--g2p` (a speaking relay each, KOKORO_EN_G2P in
  its environment: asr_tts.tts.kokoro_g2p), with the default English voice;
- Mandarin by Kokoro with each style of `--voices-zh` (`voice_type`, a name, "mean" or a
  blend), on the first speaking relay;
- both by espeak-ng (`tts_provider` "espeak"), the yardstick, unless `--no-espeak`;
- judged by each judging relay of `--judges` (WHISPER_VARIANT in its environment:
  asr_tts.asr.whisper_worker.VARIANTS; "base" is the shipped decoding).

    python -m bench.tts_intelligibility [--g2p lexicon,espeak] [--voices-zh jf_nezumi,jm_kumo]
        [--judges base] [--no-espeak] [--concurrency 3] [--limit 20]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from asr_tts.codec import OpusDecoder, resample
from asr_tts.pcm import Pcm
from bench._cli import at_least_one, parser, run_main
from bench._common import children, envelope, progress
from bench._peers import device_url, relay_env, start_relay
from bench._speech import RATE, silence, trim
from bench.asr_accuracy import connect, error_rate, push_to_talk, warm_up, words
from bench.asr_variants import decode_seconds

ENGLISH = (
    "Hello, nice to meet you.",
    "Turn on the light in the kitchen.",
    "Please dance for me.",
    "What time is it now?",
    "Set a timer for five minutes.",
    "Play some happy music.",
    "Turn up the volume a little.",
    "Tell me a funny story.",
    "Good night, sleep well.",
    "The weather is sunny today.",
    "Let's sing a song together.",
    "I am a friendly little robot.",
    "Please close the bedroom window.",
    "How old are you?",
    "Can you count to ten?",
    "Wake me up at seven tomorrow.",
    "The cat is sleeping on the sofa.",
    "Do you want to play a game?",
    "Your battery is running low.",
    "Thank you, see you later.",
)
MANDARIN = (
    "你好，很高兴认识你。",
    "请打开客厅的灯。",
    "给我讲一个故事吧。",
    "现在几点了？",
    "今天天气怎么样？",
    "请跳一支舞。",
    "播放一首儿歌。",
    "声音大一点。",
    "晚安，做个好梦。",
    "我们一起唱歌吧。",
    "我是一个小机器人。",
    "请关上卧室的窗户。",
    "你今年几岁了？",
    "明天早上七点叫我起床。",
    "小猫在沙发上睡觉。",
    "你想玩游戏吗？",
    "电量不足，请充电。",
    "谢谢你，再见。",
    "外面正在下雨。",
    "我喜欢吃苹果和香蕉。",
)
DOWNLINK_RATE = 24000  # config.toml [tts] downlink_sample_rate
ANSWER_TIMEOUT_S = 120.0
_ids = itertools.count(1)


@dataclass
class Set:
    """One voice speaking one language's phrases on one relay."""

    name: str
    lang: str
    port: int
    voice: dict[str, str]
    heard: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # judge -> pairs


async def spoken(http: aiohttp.ClientSession, port: int, text: str, voice: dict[str, str]) -> bytes:
    """`text` spoken by the relay on `port` to a new device: the decoded downlink, 16 kHz."""
    n = next(_ids)
    ws, _sid = await connect(http, device_url(port), n)
    decoder = OpusDecoder(DOWNLINK_RATE)
    pcm = bytearray()
    try:
        device = f"02:7B:00:00:{n >> 8:02X}:{n & 255:02X}"
        body = orjson.dumps({"speak": text, "voice": voice})
        url = f"http://127.0.0.1:{port}/api/v1/devices/{device}/messages"
        async with http.post(url, data=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"push refused: {resp.status} {await resp.text()}")
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    pcm += decoder.decode(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    m = orjson.loads(msg.data)
                    if m.get("type") == "tts" and m.get("state") == "stop":
                        break
    finally:
        await ws.close()
    audio = resample(Pcm(bytes(pcm), DOWNLINK_RATE), RATE).samples
    return trim(audio) + silence(0.3)


async def heard(http: aiohttp.ClientSession, port: int, pcm: bytes, lang: str) -> str:
    """What the judging relay on `port` recognises in `pcm`, the language fixed."""
    ws, sid = await connect(http, device_url(port) + f"?language={lang}", next(_ids))
    try:
        return await push_to_talk(ws, sid, pcm, 4.0)
    finally:
        await ws.close()


async def one(
    http: aiohttp.ClientSession, s: Set, text: str, judges: dict[str, int], gate: asyncio.Semaphore
) -> None:
    async with gate:
        pcm = await spoken(http, s.port, text, s.voice)
        for judge, port in judges.items():
            got = await heard(http, port, pcm, s.lang)
            s.heard.setdefault(judge, []).append((text, got))


def sets(args: argparse.Namespace, speakers: dict[str, int]) -> list[Set]:
    first = next(iter(speakers.values()))
    out = [Set(f"en_kokoro_g2p_{g}", "en", port, {}) for g, port in speakers.items()]
    out += [
        Set(f"zh_kokoro_{v}", "zh", first, {"voice_type": v})
        for v in args.voices_zh.split(",")
        if v
    ]
    if not args.no_espeak:
        out += [
            Set("en_espeak", "en", first, {"tts_provider": "espeak"}),
            Set("zh_espeak", "zh", first, {"tts_provider": "espeak"}),
        ]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet_asr = {
        "RELAY__ASR__PROVIDER": "openai",
        "RELAY__ASR__OPENAI__BASE_URL": "http://127.0.0.1:9",
    }
    with children() as started:
        speakers, judges = {}, {}
        for g2p in args.g2p.split(","):
            env = relay_env() | quiet_asr | {"RELAY__TTS__CACHE_MB": "0", "KOKORO_EN_G2P": g2p}
            _child, speakers[g2p] = start_relay(started, f"intelligibility-tts-{g2p}", env)
        for judge in args.judges.split(","):
            env = relay_env() | {
                "RELAY__ASR__PROVIDER": "embedded",
                "RELAY__TTS__PROVIDER": "espeak",
                "WHISPER_VARIANT": "" if judge == "base" else judge,
            }
            _child, judges[judge] = start_relay(started, f"intelligibility-asr-{judge}", env)
        todo = sets(args, speakers)
        async with aiohttp.ClientSession() as http:
            for port in judges.values():
                await warm_up(http, port)
            for s in todo:  # each speaking relay's model loaded before anything is timed
                await spoken(http, s.port, "OK." if s.lang == "en" else "好。", s.voice)
                progress(f"  {s.name}: ready")
            gate = asyncio.Semaphore(args.concurrency)
            jobs = []
            for i in range(args.limit):  # phrase by phrase, every set in turn
                for s in todo:
                    phrases = ENGLISH if s.lang == "en" else MANDARIN
                    jobs.append(one(http, s, phrases[i % len(phrases)], judges, gate))
            await asyncio.gather(*jobs)
            decode = {judge: await decode_seconds(http, port) for judge, port in judges.items()}
    results = {
        s.name: {
            judge: {**error_rate(pairs, s.lang == "zh"), "heard": pairs}
            for judge, pairs in s.heard.items()
        }
        for s in todo
    }
    doc = envelope("tts_intelligibility", vars(args))
    doc["phrases"] = {"en": ENGLISH, "zh": MANDARIN}
    doc["results"] = results
    doc["decode"] = decode  # per judge: relay_asr_seconds, warm-up included
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [f"decode time per judge: {doc['decode']}"]
    for name, by_judge in doc["results"].items():
        for judge, res in by_judge.items():
            rate = {k: v for k, v in res.items() if k != "heard"}
            lines.append(f"{name:24} judge {judge:10} {rate}")
            lines.extend(f"    {e} -> {g}" for e, g in res["heard"] if _wrong(e, g, "zh" in name))
    return "\n".join(lines)


def _wrong(expected: str, got: str, chinese: bool) -> bool:
    if chinese:
        return re.sub(r"[\W_]", "", expected) != re.sub(r"[\W_]", "", got)
    return words(expected) != words(got)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("tts_intelligibility", __doc__)
    p.add_argument("--g2p", default="lexicon,espeak", help="English G2Ps, a speaking relay each")
    p.add_argument(
        "--voices-zh", default="jf_nezumi", help="Kokoro styles for Mandarin, comma-separated"
    )
    p.add_argument("--judges", default="base", help="Whisper decoding variants, a relay each")
    p.add_argument("--no-espeak", action="store_true", help="leave out the espeak-ng yardstick")
    p.add_argument("--concurrency", type=int, default=3, help="phrases in flight at once")
    p.add_argument("--limit", type=int, default=20, help="phrases per set (at most 20)")
    args = p.parse_args(argv)
    at_least_one(p, args.concurrency, args.limit)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
