"""Memory of idle devices: the relay's RSS per connected device vs. a bare aiohttp server.

N devices connect (batches of concurrent handshakes), say hello, get the hello reply and
stay silent. RSS of the server process (VmRSS) before connecting and after all are connected
and settled gives KiB per device; the baseline is bench.bare_ws_server holding as many
connections, measured in the same run.

    python -m bench.idle [--devices 10000] [--batch 500] [--repeat 3]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import (
    PYTHON,
    RESULTS,
    Child,
    children,
    envelope,
    median,
    medians,
    probe_report,
    progress,
    r,
    rss_kib,
)
from bench._devices import close_in_batches, mac, say_hello, unlimited_session, voice_hello
from bench._peers import device_url, relay_env, start_relay, start_server

GOAL_RATIO = 1.5
HELLO = voice_hello()


def probe_path(kind: str) -> Path:
    """Where a probed server writes its report."""
    return RESULTS / f"idle-{kind}-probe.json"


def launch(started: list[Child], kind: str, args: argparse.Namespace) -> tuple[Child, str]:
    """Start the relay or the bare server on a free port; return it and its WebSocket URL.

    With --probe, the server runs under bench._probe with tracemalloc on (inflated RSS).
    """
    env: dict[str, str] = {}
    launcher = ["-m"]
    if args.probe:
        launcher = ["-m", "bench._probe"]
        env = {
            "BENCH_PROBE_OUT": str(probe_path(kind)),
            "BENCH_PROBE_DETAIL": "1",
            "PYTHONTRACEMALLOC": "1",
        }
    if kind == "relay":
        env |= relay_env(idle_timeout_s=str(args.idle_timeout_s))
        child, port = start_relay(started, "idle-relay", env, launcher=[*launcher, "relay"])
    else:
        argv = [PYTHON, *launcher, "bench.bare_ws_server"]
        child, port = start_server(started, "idle-bare", argv, env)
    return child, device_url(port)


async def connect(
    http: aiohttp.ClientSession, url: str, idx: int
) -> aiohttp.ClientWebSocketResponse:
    """One device: handshake headers (§1.1), hello, wait for the hello reply (§1.2)."""
    device = mac(0x02, 0x10, 0, (idx >> 16) & 255, (idx >> 8) & 255, idx & 255)
    headers = {"Device-Id": device, "Client-Id": f"idle-{idx}", "Protocol-Version": "1"}
    ws, _reply = await say_hello(http, url, headers, HELLO)
    return ws


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per connection over (connections, RSS KiB) samples."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx if sxx else float("nan")


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start one server, fill it with idle devices, read its RSS, empty it, stop it."""
    with children() as started:
        server, url = launch(started, kind, args)
        await asyncio.sleep(args.settle_s)
        report0 = await probe_report(server.pid, probe_path(kind)) if args.probe else None
        rss0 = rss_kib(server.pid)
        progress(f"{kind}: pid {server.pid}, RSS before {rss0 / 1024:.1f} MiB")
        points: list[tuple[int, int]] = [(0, rss0)]
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        t0 = time.perf_counter()
        async with unlimited_session() as http:
            try:
                async with asyncio.timeout(args.duration_cap_s):
                    for start in range(0, args.devices, args.batch):
                        batch = range(start, min(args.devices, start + args.batch))
                        sockets += await asyncio.gather(*(connect(http, url, i) for i in batch))
                        points.append((len(sockets), rss_kib(server.pid)))
                        if len(sockets) % (args.batch * 4) == 0 or len(sockets) == args.devices:
                            progress(
                                f"  {kind}: {len(sockets)} connected, "
                                f"RSS {points[-1][1] / 1024:.1f} MiB"
                            )
                connect_s = time.perf_counter() - t0
                await asyncio.sleep(args.settle_s)
                server.check_alive()
                rss1 = rss_kib(server.pid)
                report1 = await probe_report(server.pid, probe_path(kind)) if args.probe else None
                still_open = sum(1 for ws in sockets if not ws.closed)
                progress(
                    f"  {kind}: settled, RSS {rss1 / 1024:.1f} MiB, {still_open} still open, "
                    f"{(rss1 - rss0) / len(sockets):.1f} KiB/device"
                )
            finally:
                close_t0 = time.perf_counter()
                await close_in_batches(sockets, args.batch)
                progress(f"  {kind}: closed in {time.perf_counter() - close_t0:.1f}s")
    n = len(sockets)
    out: dict[str, Any] = {
        "server": kind,
        "devices": n,
        "still_open_after_settle": still_open,
        "connect_s": r(connect_s, 2),
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "kib_per_device": r((rss1 - rss0) / n, 2),
        "kib_per_device_slope": r(slope(points), 2),
    }
    if report0 is not None and report1 is not None:
        out["probe"] = per_device_growth(report0, report1, n)
    return out


def per_device_growth(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """Live objects by type and tracemalloc allocation sites, grown per connected device."""
    types = {
        name: (count - before["types"].get(name, 0)) / n for name, count in after["types"].items()
    }
    top_types = sorted(types.items(), key=lambda kv: kv[1], reverse=True)[:25]
    sites = after.get("tracemalloc_growth", [])
    return {
        "objects_per_device": r(sum(types.values()), 1),
        "types_per_device": {name: r(v, 2) for name, v in top_types if v >= 0.5},
        "python_heap_bytes_per_device": r(sum(s["size_diff"] for s in sites) / n, 0),
        "top_sites_bytes_per_device": [
            f"{s['size_diff'] / n:8.0f} B  {s['count_diff'] / n:6.2f} blocks  {s['where']}"
            for s in sites[:25]
        ],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate bare and relay for `repeat` rounds; return the JSON document."""
    reps: list[dict[str, Any]] = []
    for i in range(args.repeat):
        order = ("bare", "relay") if i % 2 == 0 else ("relay", "bare")
        got: dict[str, dict[str, Any]] = {}
        for kind in order:
            progress(f"rep {i + 1}/{args.repeat}: {kind}, {args.devices} idle devices")
            got[kind] = await measure(kind, args)
        reps.append(
            {
                "bare": got["bare"],
                "relay": got["relay"],
                "ratio": r(got["relay"]["kib_per_device"] / got["bare"]["kib_per_device"], 2),
                "ratio_slope": r(
                    got["relay"]["kib_per_device_slope"] / got["bare"]["kib_per_device_slope"], 2
                ),
            }
        )
    keys = ("kib_per_device", "kib_per_device_slope", "rss_before_kib", "rss_after_kib")
    med: dict[str, Any] = {
        side: medians([rep[side] for rep in reps], keys, 2) for side in ("bare", "relay")
    }
    med["ratio"] = r(median([rep["ratio"] for rep in reps]), 2)
    med["ratio_slope"] = r(median([rep["ratio_slope"] for rep in reps]), 2)
    return envelope("idle", vars(args)) | {
        "repetitions": reps,
        "median": med,
        "probed": args.probe,
        "goals": [
            {
                "goal": f"relay RSS per idle device <= {GOAL_RATIO}x bare aiohttp",
                "value": med["ratio"],
                "pass": med["ratio"] <= GOAL_RATIO,
            }
        ],
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    med = doc["median"]
    lines = [
        f"idle: {doc['params']['devices']} devices, "
        f"median of {len(doc['repetitions'])} repetitions",
        f"  {'server':<7}{'RSS before MiB':>16}{'RSS after MiB':>15}{'KiB/device':>12}{'slope':>9}",
    ]
    for side in ("bare", "relay"):
        s = med[side]
        lines.append(
            f"  {side:<7}{s['rss_before_kib'] / 1024:>16.1f}{s['rss_after_kib'] / 1024:>15.1f}"
            f"{s['kib_per_device']:>12.1f}{s['kib_per_device_slope']:>9.1f}"
        )
    lines.append(f"  ratio relay/bare {med['ratio']:.2f}x (slope {med['ratio_slope']:.2f}x)")
    lines += goal_lines(doc["goals"])
    for side in ("bare", "relay"):
        probe = doc["repetitions"][0][side].get("probe")
        if probe is None:
            continue
        lines.append(
            f"probe {side}: {probe['objects_per_device']} objects/device, "
            f"Python heap {probe['python_heap_bytes_per_device']:.0f} B/device; types: "
            + ", ".join(f"{k} {v:g}" for k, v in list(probe["types_per_device"].items())[:12])
        )
        lines += ["  " + row for row in probe["top_sites_bytes_per_device"][:12]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("idle", __doc__)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=500, help="concurrent handshakes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--settle-s", type=float, default=2.0, help="pause before each RSS reading")
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=600.0,
        help="RELAY__SERVER__IDLE_TIMEOUT_S for the relay (default 180 s could cut a slow run)",
    )
    p.add_argument("--duration-cap-s", type=float, default=240.0, help="cap on connecting")
    p.add_argument(
        "--probe",
        action="store_true",
        help="diagnostics: servers under bench._probe with tracemalloc (RSS then inflated)",
    )
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.batch, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
