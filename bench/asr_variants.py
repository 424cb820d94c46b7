"""Whisper decoding variants side by side, through the relay: accuracy and time per decode.

bench.asr_accuracy's sets (the real English recordings of `pocketsphinx-testdata`, the
synthetic commands spoken by espeak-ng or, with `--voice kokoro`, by the relay's Kokoro voice,
clean, noisy and band-limited, Mandarin with the language named and left to auto-detection,
60 s of silence and of noise) are said to one relay per variant (`python -m relay serve
--config config.toml`, `[asr] provider = "embedded"`, WHISPER_VARIANT in its environment:
asr_tts.asr.whisper_worker.VARIANTS; "base" is the shipped decoding). The variants take turns
set by set, so that they share the load. Per variant: WER / CER per set, what was heard, and
the mean decode time from the relay's own `relay_asr_seconds` (end of utterance to text).

    python -m bench.asr_variants [--variants base,zh_prompt] [--voice kokoro] [--speed 4]
        [--sets real_en,synth_zh]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench._cli import parser, run_main
from bench._common import children, envelope, progress, r
from bench._peers import relay_env, start_relay
from bench.asr_accuracy import accuracy, test_set, warm_up


async def decode_seconds(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """relay_asr_seconds of the relay on `port`: count and mean (warm-up included)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "relay_asr_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return {"decodes": count, "mean_s": r(total / count, 3) if count else float("nan")}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    progress(f"synthesising the test set ({args.voice})")
    sets = await test_set(args.voice)
    if args.sets:
        sets = {name: items for name, items in sets.items() if name in args.sets.split(",")}
    variants = args.variants.split(",")
    results: dict[str, Any] = {v: {"accuracy": {}} for v in variants}
    with children() as started:
        ports = {}
        for v in variants:
            env = relay_env() | {
                "RELAY__ASR__PROVIDER": "embedded",
                "RELAY__TTS__PROVIDER": "espeak",
                "WHISPER_VARIANT": "" if v == "base" else v,
            }
            _child, ports[v] = start_relay(started, f"asr-variant-{v}", env)
        async with aiohttp.ClientSession() as http:
            for port in ports.values():
                await warm_up(http, port)
            for name, items in sets.items():
                for v, port in ports.items():
                    progress(f"{v}:")
                    got = await accuracy(http, port, {name: items}, args.speed)
                    results[v]["accuracy"] |= got
            for v, port in ports.items():
                results[v]["decode"] = await decode_seconds(http, port)
    doc = envelope("asr_variants", vars(args))
    doc["results"] = results
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = []
    for v, res in doc["results"].items():
        lines.append(f"== {v}: decode {res['decode']}")
        for name, acc in res["accuracy"].items():
            lines.append(f"  {name:22} { ({k: x for k, x in acc.items() if k != 'heard'}) }")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("asr_variants", __doc__)
    p.add_argument("--variants", default="base,zh_prompt", help="a relay each, comma-separated")
    p.add_argument("--voice", choices=("espeak", "kokoro"), default="kokoro")
    p.add_argument("--speed", type=float, default=4.0, help="push-to-talk pace, × real time")
    p.add_argument("--sets", default="", help="only these sets (comma-separated names)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
