"""What the relay's INFO log costs per pass-through round trip: logging off, INFO text and
INFO JSON side by side in one run.

One reference business, one relay per log setting (`[log] level` WARNING, or INFO with
`[log] format` text or json), all started together; each repetition times the same
`bench.passthrough` round trips (a device's `custom` message to its `message_end`) on every
relay in turn, the order rotating, so the machine's noise lands on all of them. The relay
writes its log to a file (bench/results/log-cost-relay-<setting>.log), one `turn` line per
round trip at INFO. Relay CPU per round trip is compared with the relay that logs nothing,
and with the business's own CPU in the same phase (a baseline that moves with the machine).
In `simultaneous` mode every relay carries its devices at the same time, so the machine's
noise (other processes, clock speed, caches) lands on all of them in the same window, and
each relay's CPU is read from the scheduler (/proc/<pid>/task/*/schedstat, nanoseconds, not
10 ms ticks): the control's "added" there is the noise of the measure (docs/performance.md,
"What the INFO log costs").
With `--before REV`, two more relays run the code of git revision REV (extracted with
`git archive`) at INFO text and JSON (`text@before`, `json@before`), in the same rotation;
with `--control`, one more relay that logs nothing (`off-again`), whose "added" against
the first is the noise of the measure.
The relays speak with espeak-ng and hear with pocketsphinx: a pass-through round trip uses
neither, and the embedded models would only load the machine.

    python -m bench.log_cost [--devices 300] [--round-trips-per-device 20] [--repeat 5]
                             [--before REV] [--control]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import ROOT, children, envelope, median, progress, r
from bench._devices import unlimited_session
from bench._peers import device_url, relay_env, start_business, start_relay
from bench._pyspy import folded_top
from bench._sched import process_sched
from bench.passthrough import Env, Phase, connect_all, relay_round_trips, run_relay

SETTINGS = ("off", "text", "json")
MODES = ("serial", "concurrent", "simultaneous")
BEFORE = "@before"  # the suffix of a setting run on the code of `--before`
CONTROL = "off-again"  # --control: a second relay that logs nothing, against the first
GOAL_ADDED = 0.05  # at most 5 % more relay CPU per round trip than with logging off
LIGHT_SPEECH = {"RELAY__TTS__PROVIDER": "espeak", "RELAY__ASR__PROVIDER": "pocketsphinx"}


def relay_env_for(business_port: int, setting: str) -> dict[str, str]:
    """The relay's environment for one log setting (`text@before` logs as `text`)."""
    env = relay_env(business_port) | LIGHT_SPEECH
    fmt = setting.removesuffix(BEFORE)
    if fmt not in ("off", CONTROL):  # a line per connect and per round trip (README.md, "Logs")
        env |= {"RELAY__LOG__LEVEL": "INFO", "RELAY__LOG__FORMAT": fmt}
    return env


def extract(rev: str, into: Path) -> Path:
    """The repository's files as of git revision `rev`, under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(  # noqa: S603 - fixed read-only git command
        ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)  # noqa: S607
    return into


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the business and a relay per setting; time them in turn; the JSON document."""
    doc = envelope("log_cost", vars(args))  # before the runs: the load at the start
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="log-cost-") as tmp, children() as started:
        trees = {setting: ROOT for setting in SETTINGS}
        if args.before:
            before = extract(args.before, Path(tmp) / "before")
            trees |= {f"{fmt}{BEFORE}": before for fmt in SETTINGS[1:]}
        if args.control:
            trees[CONTROL] = ROOT
        business, bport = start_business(started, "log-cost-business")
        async with unlimited_session() as ws_http:
            envs = {}
            for setting, tree in trees.items():
                env = relay_env_for(bport, setting)
                name = f"log-cost-relay-{setting.replace('@', '-')}"
                relay, rport = start_relay(started, name, env, cwd=tree)
                progress(f"relay ({setting}) pid {relay.pid} :{rport}")
                envs[setting] = Env(
                    relay,
                    business,
                    device_url(rport),
                    "",
                    bport,
                    ws_http,
                    args.duration_cap_s,
                    args.py_spy,
                )
            for name, n, per_device in (
                ("serial", 1, args.serial_round_trips),
                ("concurrent", args.devices, args.round_trips_per_device),
            ):
                if name in args.modes:
                    runs[name] = await interleaved(envs, name, n, per_device, args)
            if "simultaneous" in args.modes:
                runs["simultaneous"] = await simultaneous(envs, args)
    modes = {name: summarise(reps) for name, reps in runs.items()}
    doc |= {"modes": modes, "goals": goals(modes), "loadavg_at_end": list(os.getloadavg())}
    samples = {m: p for e in envs.values() for m, p in e.samples.items() if p.exists()}
    if samples:
        doc["relay_samples"] = {mode: folded_top(path) for mode, path in samples.items()}
    return doc


async def interleaved(
    envs: dict[str, Env], name: str, n: int, per_device: int, args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """`repeat` rounds; each times every relay once, the first setting rotating."""
    reps: dict[str, list[dict[str, Any]]] = {s: [] for s in envs}
    order = list(envs)
    for i in range(args.repeat):
        for setting in order[i % len(order) :] + order[: i % len(order)]:
            sample = f"log-cost-{setting}" if name == "concurrent" else ""  # with --py-spy
            phase = await run_relay(envs[setting], 100 * i, n, per_device, args.warmup, sample)
            s = phase.summary()
            reps[setting].append(s)
            progress(
                f"{name} rep {i + 1}/{args.repeat} log {setting}: {s['round_trips']} rt, "
                f"p50 {s['p50_ms']:.3f} ms, relay cpu {s['relay_cpu_us_per_rt']:.1f} us/rt, "
                f"business {s['business_cpu_us_per_rt']:.1f}"
            )
    return reps


async def simultaneous(
    envs: dict[str, Env], args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """`repeat` rounds; in each, `devices` devices on every relay run their round trips at
    once, each relay's CPU read from the scheduler over the same window."""
    reps: dict[str, list[dict[str, Any]]] = {s: [] for s in envs}
    business = next(iter(envs.values())).business.pid
    for i in range(args.repeat):
        devices = {
            s: await connect_all(e.ws_http, e.relay_ws_url, 100 * i, args.devices)
            for s, e in envs.items()
        }
        try:
            warm = [
                relay_round_trips(d, args.warmup, None, 0) for ds in devices.values() for d in ds
            ]
            await asyncio.gather(*warm)
            per_device = args.round_trips_per_device
            phases = {s: Phase("relay", args.devices, args.devices * per_device) for s in envs}
            cpu0 = {s: process_sched(e.relay.pid)[0] for s, e in envs.items()}
            biz0 = process_sched(business)[0]
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    relay_round_trips(d, per_device, phases[s], args.warmup)
                    for s, ds in devices.items()
                    for d in ds
                )
            )
            wall = time.perf_counter() - t0
            biz = process_sched(business)[0] - biz0
            total = sum(len(ph.latencies_ms) for ph in phases.values())
            for s, ph in phases.items():
                ph.wall_s = wall
                # The business serves every relay at once: its CPU is shared by round trip.
                share = biz * len(ph.latencies_ms) / total if total else 0.0
                ph.cpu_s = {
                    "relay": process_sched(envs[s].relay.pid)[0] - cpu0[s],
                    "business": share,
                }
                reps[s].append(ph.summary())
        finally:
            closing = [d.ws.close() for ds in devices.values() for d in ds]
            await asyncio.gather(*closing, return_exceptions=True)
        for e in envs.values():
            e.relay.check_alive()
        added = {
            s: reps[s][-1]["relay_cpu_us_per_rt"] / reps["off"][-1]["relay_cpu_us_per_rt"] - 1
            for s in envs
        }
        progress(
            f"simultaneous rep {i + 1}/{args.repeat}: "
            + ", ".join(
                f"{s} {reps[s][-1]['relay_cpu_us_per_rt']:.1f} us/rt ({added[s]:+.1%})"
                for s in envs
            )
        )
    return reps


def summarise(reps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per setting: medians of relay CPU, of relay ÷ business CPU and of p50; the added CPU
    against `off` as the median of the per-repetition ratios (paired in time)."""
    out: dict[str, Any] = {}
    for setting, phases in reps.items():
        paired = [
            p["relay_cpu_us_per_rt"] / off["relay_cpu_us_per_rt"] - 1
            for p, off in zip(phases, reps["off"], strict=True)
        ]
        out[setting] = {
            "relay_cpu_us_per_rt": r(median([p["relay_cpu_us_per_rt"] for p in phases]), 1),
            "relay_per_business_cpu": r(
                median([p["relay_cpu_us_per_rt"] / p["business_cpu_us_per_rt"] for p in phases]),
                3,
            ),
            "p50_ms": r(median([p["p50_ms"] for p in phases])),
            "added_cpu_vs_off": r(median(paired), 3),
            "added_per_repetition": [r(p, 3) for p in paired],
            "round_trips": [p["round_trips"] for p in phases],
            "errors": sum(p["errors"] for p in phases),
        }
    return out


def goals(modes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goal: INFO costs at most 5 % relay CPU per round trip, in each format."""
    return [
        {
            "goal": f"[{name}] log {setting}: relay CPU per round trip <= +{GOAL_ADDED:.0%} "
            "of logging off",
            "value": f"{mode[setting]['added_cpu_vs_off']:+.1%}",
            "pass": mode[setting]["added_cpu_vs_off"] <= GOAL_ADDED,
        }
        for name, mode in modes.items()
        for setting in SETTINGS[1:]
    ]


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    lines = []
    for name, mode in doc["modes"].items():
        lines.append(f"{name}: median of {doc['params']['repeat']} interleaved repetitions")
        lines.append(f"  {'log':<13}{'relay us/rt':>12}{'÷ business':>11}{'p50 ms':>9}{'added':>8}")
        for setting, s in mode.items():
            lines.append(
                f"  {setting:<13}{s['relay_cpu_us_per_rt']:>12.1f}"
                f"{s['relay_per_business_cpu']:>11.2f}{s['p50_ms']:>9.3f}"
                f"{s['added_cpu_vs_off']:>+8.1%}"
            )
    lines += goal_lines(doc["goals"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("log_cost", __doc__)
    p.add_argument("--devices", type=int, default=300, help="concurrent devices")
    p.add_argument("--round-trips-per-device", type=int, default=20)
    p.add_argument("--serial-round-trips", type=int, default=1000, help="one device, in a row")
    p.add_argument("--warmup", type=int, default=1, help="untimed round trips per device first")
    p.add_argument("--duration-cap-s", type=float, default=120.0, help="cap per timed phase")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--modes",
        type=lambda v: [m for m in v.split(",") if m],
        default=list(MODES),
        help=f"comma list of {','.join(MODES)} (default: all)",
    )
    p.add_argument("--before", default="", help="git revision to run beside this checkout")
    p.add_argument(
        "--control",
        action="store_true",
        help=f"a second relay that logs nothing ({CONTROL}): the noise of 'added'",
    )
    p.add_argument(
        "--py-spy",
        default=None,
        help="py-spy binary: sample each relay during its first concurrent phase (diagnostics; "
        "the sampled phase is timed too, so measure without it)",
    )
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.round_trips_per_device, args.repeat)
    at_least_one(p, args.serial_round_trips)
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes: a comma list of {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
