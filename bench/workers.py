"""Multi-worker: idle-device memory and pass-through throughput, `--workers 1` vs `--workers 2`.

Two relays run at once, `python -m relay serve --config config.toml --workers 1` and the same
with `--workers 2` (SO_REUSEPORT, README.md), next to one reference business. The
phases alternate between them, so machine noise lands on both:

- pass-through: the concurrent mode of bench.passthrough (N devices x M `custom` round trips
  in a closed loop, latency send -> `message_end` envelope); CPU is summed over the relay's
  whole process tree (the supervisor and its workers);
- idle: bench.idle's devices (hello, then silence) on a fresh relay of each kind; RSS summed
  over the process tree, before and after, and connections per second while connecting.

    python -m bench.workers [--devices 1000] [--round-trips-per-device 20] [--idle-devices 5000]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp

from bench import idle, passthrough
from bench._cli import at_least_one, parser, run_main
from bench._common import (
    Child,
    children,
    envelope,
    medians,
    progress,
    r,
    rss_kib,
    run_capped,
    self_cpu_seconds,
)
from bench._devices import close_in_batches, in_batches, unlimited_session
from bench._peers import device_url, relay_env, start_business, start_relay
from bench._sched import process_tree, tree_sched

WORKERS = (1, 2)


def tree_rss(pid: int) -> dict[int, int]:
    """RSS (KiB) of a process and of each descendant."""
    out = {}
    for p in process_tree(pid):
        try:
            out[p] = rss_kib(p)
        except (OSError, RuntimeError):
            continue
    return out


def start_relay_workers(
    started: list[Child], name: str, workers: int, env: dict[str, str]
) -> tuple[Child, int]:
    """A relay with `workers` processes on a free port, ready (/healthz)."""
    child, port = start_relay(started, name, env, after=["--workers", str(workers)])
    if workers > 1:
        # Every worker must be serving, not only the first one that answered.
        for _ in range(100):
            if len(process_tree(child.pid)) > workers:
                break
            time.sleep(0.1)
        time.sleep(1.0)
    return child, port


# ---- pass-through -------------------------------------------------------------------------


async def passthrough_phase(
    http: aiohttp.ClientSession,
    relay: Child,
    business: Child,
    port: int,
    rep: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """bench.passthrough's concurrent relay phase, with CPU over the relay's process tree."""
    devices = await passthrough.connect_all(http, device_url(port), rep, args.devices)
    try:
        await asyncio.gather(
            *(passthrough.relay_round_trips(d, args.warmup, None, 0) for d in devices)
        )
        phase = passthrough.Phase("relay", args.devices, args.devices * args.round_trips_per_device)
        work = (
            passthrough.relay_round_trips(d, args.round_trips_per_device, phase, args.warmup)
            for d in devices
        )
        # schedstat over the process trees: CPU in ns, where /proc/<pid>/stat counts 10 ms ticks
        (cpu0, w0), (b0, _), g0 = (
            tree_sched(relay.pid),
            tree_sched(business.pid),
            self_cpu_seconds(),
        )
        t0 = time.perf_counter()
        phase.capped = await run_capped(work, args.duration_cap_s)
        phase.wall_s = time.perf_counter() - t0
        (cpu1, w1), (b1, _) = tree_sched(relay.pid), tree_sched(business.pid)
        phase.cpu_s = {
            "relay": cpu1 - cpu0,
            "business": b1 - b0,
            "loadgen": self_cpu_seconds() - g0,
        }
        relay.check_alive()
        # seconds per second the relay's processes were ready to run but had no CPU
        return phase.summary() | {"relay_runqueue_wait": r((w1 - w0) / phase.wall_s)}
    finally:
        await asyncio.gather(*(d.ws.close() for d in devices), return_exceptions=True)


async def run_passthrough(args: argparse.Namespace) -> dict[str, Any]:
    """Both relays and one business; concurrent phases alternating between the relays."""
    reps: list[dict[str, Any]] = []
    with children() as started:
        business, bport = start_business(started, "workers-business")
        env = relay_env(bport)
        relays = {}
        for w in WORKERS:
            child, port = start_relay_workers(started, f"workers-relay-{w}", w, env)
            relays[w] = (child, port)
            progress(f"--workers {w}: pid {child.pid} :{port}, tree {process_tree(child.pid)}")
        async with unlimited_session() as http:
            for i in range(args.repeat):
                order = WORKERS if i % 2 == 0 else tuple(reversed(WORKERS))
                got: dict[str, Any] = {}
                for w in order:
                    child, port = relays[w]
                    progress(
                        f"pass-through rep {i + 1}/{args.repeat}: --workers {w}, "
                        f"{args.devices} devices x {args.round_trips_per_device}"
                    )
                    s = await passthrough_phase(http, child, business, port, 10 * i + w, args)
                    got[str(w)] = s
                    progress(
                        f"  {s['round_trips']} rt in {s['wall_s']:.2f}s, "
                        f"{s['throughput_per_s']:.0f}/s, p50 {s['p50_ms']:.1f} ms, p99 "
                        f"{s['p99_ms']:.1f} ms, relay cpu {s['relay_cpu_us_per_rt']:.0f} us/rt, "
                        f"business {s['business_cpu_us_per_rt']:.0f}, "
                        f"loadgen {s['loadgen_cpu_us_per_rt']:.0f}, relay run-queue wait "
                        f"{s['relay_runqueue_wait']:.2f}"
                    )
                reps.append(got)
    med = {str(w): medians([rep[str(w)] for rep in reps]) for w in WORKERS}
    one, two = med["1"], med["2"]
    return {
        "repetitions": reps,
        "median": med,
        "ratio_2_over_1": {
            "throughput": r(two["throughput_per_s"] / one["throughput_per_s"], 2),
            "p50": r(two["p50_ms"] / one["p50_ms"], 2),
            "relay_cpu_per_rt": r(two["relay_cpu_us_per_rt"] / one["relay_cpu_us_per_rt"], 2),
        },
    }


# ---- idle devices -------------------------------------------------------------------------


async def idle_phase(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh relay with `workers`; connect idle devices; RSS of its tree before and after."""
    env = relay_env(idle_timeout_s="600")
    with children() as started:
        child, port = start_relay_workers(started, f"workers-idle-{workers}", workers, env)
        await asyncio.sleep(args.settle_s)
        rss0 = tree_rss(child.pid)
        url = device_url(port)
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        async with unlimited_session() as http:
            try:
                t0 = time.perf_counter()
                cpu0 = tree_sched(child.pid)[0]
                async with asyncio.timeout(args.duration_cap_s):
                    await in_batches(
                        lambda i: idle.connect(http, url, i), args.idle_devices, args.batch, sockets
                    )
                connect_s = time.perf_counter() - t0
                connect_cpu = tree_sched(child.pid)[0] - cpu0
                await asyncio.sleep(args.settle_s)
                child.check_alive()
                rss1 = tree_rss(child.pid)
                still_open = sum(1 for ws in sockets if not ws.closed)
            finally:
                await close_in_batches(sockets, args.batch)
    n = len(sockets)
    growth = {p: rss1.get(p, 0) - rss0.get(p, 0) for p in rss0}
    return {
        "workers": workers,
        "devices": n,
        "still_open": still_open,
        "connect_s": r(connect_s, 2),
        "connects_per_s": r(n / connect_s, 1),
        "relay_cpu_us_per_connect": r(connect_cpu * 1e6 / n, 1),
        "rss_before_kib": sum(rss0.values()),
        "rss_after_kib": sum(rss1.values()),
        "rss_before_by_process_kib": list(rss0.values()),
        "growth_by_process_kib": list(growth.values()),
        "kib_per_device": r((sum(rss1.values()) - sum(rss0.values())) / n, 2),
    }


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the two kinds for `idle_repeat` rounds."""
    reps: list[dict[str, Any]] = []
    for i in range(args.idle_repeat):
        order = WORKERS if i % 2 == 0 else tuple(reversed(WORKERS))
        got: dict[str, Any] = {}
        for w in order:
            progress(f"idle rep {i + 1}/{args.idle_repeat}: --workers {w}, {args.idle_devices}")
            g = got[str(w)] = await idle_phase(w, args)
            progress(
                f"  RSS {g['rss_before_kib'] / 1024:.1f} -> {g['rss_after_kib'] / 1024:.1f} MiB "
                f"(by process {[round(x / 1024) for x in g['rss_before_by_process_kib']]} MiB "
                f"before), {g['kib_per_device']:.1f} KiB/device, {g['connects_per_s']:.0f} "
                f"connects/s, {g['still_open']} open"
            )
        reps.append(got)
    keys = (
        "kib_per_device",
        "rss_before_kib",
        "rss_after_kib",
        "connects_per_s",
        "relay_cpu_us_per_connect",
    )
    med = {str(w): medians([rep[str(w)] for rep in reps], keys, 1) for w in WORKERS}
    return {"repetitions": reps, "median": med}


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    pt, idl = doc["passthrough"]["median"], doc["idle"]["median"]
    lines = [
        f"workers: pass-through {doc['params']['devices']} devices x "
        f"{doc['params']['round_trips_per_device']}, median of {doc['params']['repeat']}",
        f"  {'workers':<8}{'rt/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'relay us/rt':>12}"
        f"{'business':>9}{'loadgen':>9}",
    ]
    for w in WORKERS:
        s = pt[str(w)]
        lines.append(
            f"  {w:<8}{s['throughput_per_s']:>8.0f}{s['p50_ms']:>9.1f}{s['p99_ms']:>9.1f}"
            f"{s['relay_cpu_us_per_rt']:>12.0f}{s['business_cpu_us_per_rt']:>9.0f}"
            f"{s['loadgen_cpu_us_per_rt']:>9.0f}"
        )
    x = doc["passthrough"]["ratio_2_over_1"]
    lines.append(
        f"  2 vs 1 workers: throughput {x['throughput']:.2f}x, p50 {x['p50']:.2f}x, "
        f"relay CPU per rt {x['relay_cpu_per_rt']:.2f}x"
    )
    lines.append(
        f"idle: {doc['params']['idle_devices']} devices, median of {doc['params']['idle_repeat']}"
    )
    lines.append(
        f"  {'workers':<8}{'RSS before MiB':>15}{'after MiB':>11}{'KiB/device':>11}"
        f"{'connects/s':>11}{'us/connect':>11}"
    )
    for w in WORKERS:
        s = idl[str(w)]
        lines.append(
            f"  {w:<8}{s['rss_before_kib'] / 1024:>15.1f}{s['rss_after_kib'] / 1024:>11.1f}"
            f"{s['kib_per_device']:>11.1f}{s['connects_per_s']:>11.0f}"
            f"{s['relay_cpu_us_per_connect']:>11.0f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("workers", __doc__)
    p.add_argument("--devices", type=int, default=1000, help="pass-through devices")
    p.add_argument("--round-trips-per-device", type=int, default=20)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration-cap-s", type=float, default=120.0)
    p.add_argument("--idle-devices", type=int, default=5000)
    p.add_argument("--batch", type=int, default=500, help="concurrent idle handshakes")
    p.add_argument("--idle-repeat", type=int, default=2)
    p.add_argument("--settle-s", type=float, default=2.0)
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.round_trips_per_device, args.repeat, args.idle_devices)
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts; the JSON document."""
    pt = await run_passthrough(args)
    idl = await run_idle(args)
    return envelope("workers", vars(args)) | {"passthrough": pt, "idle": idl}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
