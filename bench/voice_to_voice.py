"""Voice to voice: from the end of a spoken command to the first audio of the answer at the
device, with the reference business and the embedded voice, for each recogniser side by side.

One relay per recogniser variant (`python -m relay serve --config config.toml`, the shipped
`[tts] provider = "embedded"`: Kokoro) and one reference business
(examples/business_service.py) run as subprocesses, all at once; the turns take turns between
the relays, so every variant sees the same load. The variants:

- `whisper`: `[asr] provider = "embedded"` (Whisper base, the shipped default; early
  recognition at `[vad] early_silence_s`, as shipped);
- `pocketsphinx`: `provider = "pocketsphinx"`, its full vocabulary;
- `pocketsphinx-grammar`: the same restricted to the commands' words (`grammar_words`).

A device speaks each command as bench.turn_latency's does (espeak-ng, Opus 16 kHz, 60 ms
packets sent in real time in auto mode, the VAD ends the utterance, a fresh connection per
turn) and times, from the moment it sent the last packet holding speech: `stt`, and the first
binary frame of the answer (voice to voice). The reference business answers `You said:
"<text>". I am the reference business service speaking.`; the relays run with
`RELAY__TTS__CACHE_MB=0`, so every answer is synthesised (a real answer varies). The relay's
own histograms give the parts (ASR, business first event, TTS of the first segment), as in
bench.turn_latency.

    python -m bench.voice_to_voice [--turns 8] [--variants whisper,pocketsphinx] [--quick]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

import aiohttp

from asr_tts.segmenter import SegmenterConfig
from asr_tts.vad import SileroModel
from bench._cli import at_least_one, parser, run_main
from bench._common import children, envelope, percentile, progress, r
from bench._peers import device_url, relay_env, start_business, start_relay
from bench.turn_latency import Utterance, per_turn, prepare, scrape, speak_turn

PHRASES = ("turn on the light", "what time is it", "turn off the light", "play some music")
VARIANTS: dict[str, dict[str, str]] = {
    "whisper": {"RELAY__ASR__PROVIDER": "embedded"},
    "pocketsphinx": {"RELAY__ASR__PROVIDER": "pocketsphinx"},
    "pocketsphinx-grammar": {
        "RELAY__ASR__PROVIDER": "pocketsphinx",
        "RELAY__ASR__GRAMMAR_WORDS": ",".join(sorted({w for p in PHRASES for w in p.split()})),
    },
}
KEYS = ("to_stt_ms", "to_first_audio_ms", "asr_ms", "business_first_ms", "tts_first_ms")


def words(text: str) -> str:
    """Lower case, punctuation off: what counts as heard right."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 / p90 / max of the times of one variant's complete turns."""
    out: dict[str, Any] = {"turns": len(rows)}
    for key in KEYS:
        values = sorted(row[key] for row in rows)
        out[key] = {
            "p50": r(percentile(values, 50), 1),
            "p90": r(percentile(values, 90), 1),
            "max": r(values[-1] if values else float("nan"), 1),
        }
    out["heard_right"] = sum(1 for row in rows if row["recognised"])
    return out


async def one_turn(
    http: aiohttp.ClientSession, port: int, u: Utterance, idx: int, min_silence_s: float
) -> dict[str, Any] | str:
    """A timed turn on the relay at `port`: its row, or why it has none."""
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    before = await scrape(http, metrics_url)
    try:
        turn = await speak_turn(http, device_url(port), metrics_url, u, idx)
    except TimeoutError:
        return "no tts stop within 30 s"
    await asyncio.sleep(0.1)  # the relay records its histograms as the turn ends
    after = await scrape(http, metrics_url)
    if not turn.first_audio_t or not turn.stt_t:
        return f"heard {turn.stt_text!r}, no answer audio"
    row = per_turn(turn, u, before, after, min_silence_s)
    row["recognised"] = words(turn.stt_text) == words(u.phrase)
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the speech, start the business and a relay per variant, take turns."""
    doc = envelope("voice_to_voice", vars(args))  # the machine's load as the run starts
    seg = SegmenterConfig()  # config.toml [vad] = the segmenter's defaults
    progress("preparing utterances (espeak-ng, Opus, offline VAD replay)")
    model = SileroModel(threads=1)
    utts = [prepare(p, model, seg) for p in PHRASES]
    variants = args.variants.split(",")
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    failed: dict[str, list[str]] = {v: [] for v in variants}
    with children() as started:
        _business, bport = start_business(started, "v2v-business")
        ports: dict[str, int] = {}
        for v in variants:
            env = relay_env(bport) | VARIANTS[v] | {"RELAY__TTS__CACHE_MB": "0"}
            _relay, ports[v] = start_relay(started, f"v2v-{v}", env)
        progress(f"business :{bport}, relays {ports}")
        async with aiohttp.ClientSession() as http:
            for k in range(args.warmup + args.turns):
                u = utts[k % len(utts)]
                for j, v in enumerate(variants):
                    got = await one_turn(http, ports[v], u, 100 * k + j, seg.min_silence_s)
                    for child in started:
                        child.check_alive()
                    if isinstance(got, str):
                        failed[v].append(f"{u.phrase!r}: {got}")
                        progress(f"{v}: {u.phrase!r} {got}")
                        continue
                    progress(
                        f"{v}: {u.phrase!r} heard {got['stt_text']!r}: stt "
                        f"{got['to_stt_ms']:.0f} ms, first audio {got['to_first_audio_ms']:.0f} "
                        f"ms (asr {got['asr_ms']:.0f}, tts {got['tts_first_ms']:.0f})"
                        + (" [warm-up]" if k < args.warmup else "")
                    )
                    if k >= args.warmup:
                        rows[v].append(got)
    doc["config"] = {
        "variants": {v: VARIANTS[v] for v in variants},
        "tts": "embedded (Kokoro), cache_mb 0",
        "min_silence_s": seg.min_silence_s,
        "phrases": list(PHRASES),
    }
    doc["results"] = {v: summary(rows[v]) | {"failed": failed[v]} for v in variants}
    doc["turns"] = rows
    return doc


def table(doc: dict[str, Any]) -> str:
    """p50 / p90 per variant."""
    lines = ["voice to voice, ms from the end of speech (last speech packet sent): p50 / p90"]
    lines.append(f"  {'variant':<22}" + "".join(f"{k.removesuffix('_ms'):>22}" for k in KEYS))
    for v, res in doc["results"].items():
        cells = "".join(f"{res[k]['p50']:>12.0f} /{res[k]['p90']:>7.0f}" for k in KEYS)
        lines.append(f"  {v:<22}{cells}")
        lines.append(
            f"  {'':<22}{res['turns']} turns, {res['heard_right']} heard right, "
            f"{len(res['failed'])} without an answer"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("voice_to_voice", __doc__)
    p.add_argument("--turns", type=int, default=8, help="timed turns per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed turns per variant first")
    p.add_argument(
        "--variants",
        default="whisper,pocketsphinx,pocketsphinx-grammar",
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    p.add_argument("--quick", action="store_true", help="2 turns per variant (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.turns = 2
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    at_least_one(p, args.turns, args.warmup + 1)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
