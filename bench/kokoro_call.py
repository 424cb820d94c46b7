"""Where one Kokoro call's time goes: onnxruntime settings side by side, and its profile by op.

One process per setting (as the relay's workers are: `kokoro_worker.load`'s session, its
settings changed), each loading the model and the phonemiser; the calls go to them in turn,
the order rotating every repetition, so that the machine's noise lands on every setting. A
call is what `kokoro_worker.synthesize` runs for one clause: phonemes, token chunks of at most
MAX_TOKENS, one `session.run` per chunk. Texts: one word, the first segment of
bench.tts_first_audio's answers in both languages, and its whole English answer (two runs).

Settings (the first is the baseline the ratios divide by): `base` (the worker's own: 2 threads,
idle threads sleeping), `threads1`, `spin` (idle threads spinning), `daz` (denormals as zero),
`extended` (graph optimisation EXTENDED instead of ALL).

With --profile, the baseline's onnxruntime profile (`SessionOptions.enable_profiling`) of the
last repetition: per op type, the summed kernel time of one call of each text (the raw
profile, tens of MB, is left in bench/results/).

    python -m bench.kokoro_call [--reps 7] [--settings base,threads1,spin,daz,extended]
                                [--profile]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from bench._cli import at_least_one, parser, run_main
from bench._common import RESULTS, envelope, median, progress, r

TEXTS = (
    ("en", "Light."),
    ("en", "The kitchen light is on,"),
    ("zh", "厨房的灯已经打开了，"),
    ("en", "The kitchen light is on, enjoy your quiet evening now."),
)
SETTINGS: dict[str, dict[str, Any]] = {
    "base": {},
    "threads1": {"threads": 1},
    "spin": {"spin": "1"},
    "daz": {"daz": True},
    "extended": {"opt": "ORT_ENABLE_EXTENDED"},
}
VOICE = "jf_nezumi"


def serve(setting: dict[str, Any], profile: str | None, conn: Connection) -> None:
    """In a spawned process: load as the worker does, with `setting`; then time calls."""
    import numpy as np
    import onnxruntime as ort

    from asr_tts.tts import kokoro_files as files
    from asr_tts.tts import kokoro_worker as worker
    from asr_tts.tts.kokoro_g2p import Phonemizer

    model = files.locate()
    options = ort.SessionOptions()
    options.intra_op_num_threads = setting.get("threads", 2)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", setting.get("spin", "0"))
    if setting.get("daz"):
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if "opt" in setting:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, setting["opt"])
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    started = time.perf_counter()
    blob = files.model_bytes(model)
    session = ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])
    vocab, style = files.vocab(model), files.load_voices(model)[VOICE]
    phonemizer = Phonemizer()
    conn.send(time.perf_counter() - started)
    while (job := conn.recv()) is not None:
        lang, text = job
        began = time.perf_counter()
        samples, runs = 0, 0
        for chunk in worker.chunks(phonemizer(lang, text), vocab):
            feed = {
                "tokens": np.array([[0, *chunk, 0]], dtype=np.int64),
                "style": style[len(chunk) - 1].reshape(1, files.STYLE_DIM),
                "speed": np.array([1.0], dtype=np.float32),
            }
            samples += int(np.asarray(session.run(None, feed)[0]).size)
            runs += 1
        conn.send((time.perf_counter() - began, samples / files.SAMPLE_RATE, runs))
    conn.send(session.end_profiling() if profile else "")


def by_op(path: str, runs: int) -> dict[str, dict[str, float]]:
    """Per op type, ms of kernel time in each of the profile's last `runs` model runs."""
    events = orjson.loads(Path(path).read_bytes())
    model_runs = [e for e in events if e.get("name") == "model_run"][-runs:]
    out: dict[str, dict[str, float]] = {}
    for i, run in enumerate(model_runs):
        ops: Counter[str] = Counter()
        end = run["ts"] + run["dur"]
        for e in events:
            kernel = e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            if kernel and run["ts"] <= e["ts"] <= end:
                ops[e["args"]["op_name"]] += e["dur"]
        out[f"run{i}_{r(run['dur'] / 1000, 0)}ms"] = {
            op: r(us / 1000, 1) for op, us in ops.most_common(12)
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start one process per setting, time the texts in rotating order, report medians."""
    names = args.settings.split(",")
    doc = envelope("kokoro_call", {"reps": args.reps, "settings": names, "voice": VOICE})
    ctx = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    procs = []
    for name in names:
        mine, theirs = ctx.Pipe()
        profile = None
        if args.profile and name == names[0]:
            profile = str(RESULTS / "kokoro_call_profile")
        proc = ctx.Process(target=serve, args=(SETTINGS[name], profile, theirs), daemon=True)
        proc.start()
        procs.append(proc)
        conns[name] = mine
    try:
        doc["load_s"] = {name: r(conn.recv(), 2) for name, conn in conns.items()}
        for conn in conns.values():  # the first call of each text is not timed
            for text in TEXTS:
                conn.send(text)
                conn.recv()
        ms: dict[str, dict[str, list[float]]] = {n: {t: [] for _, t in TEXTS} for n in names}
        audio: dict[str, tuple[float, int]] = {}
        for rep in range(args.reps):
            for text in TEXTS:
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    conns[name].send(text)
                    seconds, audio_s, runs = conns[name].recv()
                    ms[name][text[1]].append(seconds * 1000)
                    audio[text[1]] = (r(audio_s, 2), runs)
            progress(f"repetition {rep + 1}/{args.reps}")
        for conn in conns.values():
            conn.send(None)
        profiles = {name: conn.recv() for name, conn in conns.items()}
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    base = names[0]
    doc["audio_s_and_runs"] = audio
    doc["median_ms"] = {n: {t: r(median(v), 0) for t, v in d.items()} for n, d in ms.items()}
    doc["ratio"] = {
        n: {t: r(median(v) / median(ms[base][t]), 3) for t, v in d.items()} for n, d in ms.items()
    }
    if profiles.get(base):
        doc["profile_by_op_ms"] = by_op(profiles[base], sum(runs for _, runs in audio.values()))
        doc["profile_file"] = profiles[base]
    return doc


def table(doc: dict[str, Any]) -> str:
    """The medians and ratios, for a reader."""
    lines = [f"kokoro_call: {doc['params']['reps']} repetitions, median ms (ratio to base)"]
    for name, series in doc["median_ms"].items():
        cells = [f"{ms:.0f} ({doc['ratio'][name][t]:.2f})" for t, ms in series.items()]
        lines.append(f"  {name:<10}" + "  ".join(f"{c:>14}" for c in cells))
    lines.append(f"  texts: {list(doc['median_ms'][doc['params']['settings'][0]])}")
    lines.append(f"  audio s and runs: {doc['audio_s_and_runs']}  load s: {doc['load_s']}")
    for run_name, ops in doc.get("profile_by_op_ms", {}).items():
        lines.append(f"  profile {run_name}: {ops}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("kokoro_call", __doc__)
    p.add_argument("--reps", type=int, default=7, help="repetitions of every text and setting")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, base first")
    p.add_argument("--profile", action="store_true", help="the first setting's op profile")
    args = p.parse_args(argv)
    at_least_one(p, args.reps)
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        p.error(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
