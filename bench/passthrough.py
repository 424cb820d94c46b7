"""Pass-through round trips through the relay vs. straight to the business, side by side.

A device sends `custom` (a `report` payload) and waits for the `message_end` envelope; the
baseline POSTs the same payload to the reference business and reads the SSE answer until
`message_end`. Same load generator, same concurrency, same count, same run.

    python -m bench.passthrough [--devices 1000] [--round-trips-per-device 20] [--repeat 3]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import pstats
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench._cli import at_least_one, parser, run_main
from bench._common import (
    RESULTS,
    Child,
    children,
    cpu_seconds,
    envelope,
    median,
    medians,
    percentile,
    probe_report,
    progress,
    r,
    run_capped,
    self_cpu_seconds,
    tcp_states,
)
from bench._devices import in_batches, mac, say_hello, unlimited_session
from bench._gcstats import GCStats
from bench._gcstats import delta as gc_delta
from bench._peers import device_url, relay_env, start_business, start_relay
from bench._pyspy import folded_top, start_py_spy

LOADGEN_GC = GCStats()  # the load generator's own collector work, for comparison
GOAL_ADDED_P50_MS = 1.0
GOAL_RELAY_CPU_US = 250.0
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
CONNECT_BATCH = 200  # concurrent WebSocket handshakes while setting devices up


@dataclass
class Phase:
    """One timed phase of one side: what happened and what it cost."""

    side: str
    devices: int
    planned: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    capped: bool = False
    cpu_s: dict[str, float] = field(default_factory=dict)
    business_conns_closed: int = 0
    business_conns_open: int = 0
    relay_gc: dict[str, Any] | None = None
    loadgen_gc: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The phase as JSON: counts, throughput, latency percentiles, CPU per round trip."""
        lat = sorted(self.latencies_ms)
        n = len(lat)
        out: dict[str, Any] = {
            "side": self.side,
            "devices": self.devices,
            "round_trips": n,
            "planned": self.planned,
            "errors": self.errors,
            "capped": self.capped,
            "wall_s": r(self.wall_s),
            "throughput_per_s": r(n / self.wall_s if self.wall_s else 0.0, 1),
            "p50_ms": r(percentile(lat, 50)),
            "p90_ms": r(percentile(lat, 90)),
            "p99_ms": r(percentile(lat, 99)),
            "max_ms": r(lat[-1] if lat else float("nan")),
            "business_conns_closed": self.business_conns_closed,
            "business_conns_open": self.business_conns_open,
        }
        for proc, secs in self.cpu_s.items():
            out[f"{proc}_cpu_us_per_rt"] = r(secs * 1e6 / n if n else float("nan"), 1)
        for who, stats in (("relay", self.relay_gc), ("loadgen", self.loadgen_gc)):
            if stats is not None:
                out[f"{who}_gc"] = gc_summary(stats, n)
        return out

    def record(self, ok: bool, t0_ns: int, t1_ns: int) -> None:
        """One round trip: its latency when it ended in `message_end`, else an error."""
        if ok:
            self.latencies_ms.append((t1_ns - t0_ns) / 1e6)
        else:
            self.errors += 1


def gc_summary(stats: dict[str, Any], n: int) -> dict[str, Any]:
    """A GC delta per round trip: collector CPU, objects freed by it, collections."""
    return {
        "cpu_us_per_rt": r(sum(stats["cpu_s"]) * 1e6 / n if n else float("nan"), 1),
        "collected_per_rt": r(sum(stats["collected"]) / n if n else float("nan"), 1),
        "collections_by_generation": stats["collections"],
        "cpu_ms_by_generation": [r(x * 1e3, 1) for x in stats["cpu_s"]],
        "tracked_objects_after": stats["objects"],
    }


# ---- the two sides --------------------------------------------------------------------


def report_payload(device_id: str, session_id: str, k: int) -> dict[str, Any]:
    """The pass-through payload both sides send (docs/protocol.md §2.1, a `report`)."""
    return {
        "auth": {"device_id": device_id},
        "type": "report",
        "details": {"session_id": session_id, "k": k},
    }


@dataclass
class Device:
    """One connected device: its WebSocket and what the relay's hello said."""

    ws: aiohttp.ClientWebSocketResponse[Any]
    device_id: str
    session_id: str


async def connect_device(http: aiohttp.ClientSession, url: str, rep: int, idx: int) -> Device:
    """Handshake, hello, and the relay's hello reply (§1.1, §1.2)."""
    octets = (0x02, rep & 0xFF, (idx >> 24) & 0xFF, (idx >> 16) & 0xFF, (idx >> 8) & 0xFF)
    header = mac(*octets, idx & 0xFF)
    headers = {"Device-Id": header, "Client-Id": f"bench-{rep}-{idx}", "Protocol-Version": "1"}
    ws, hello = await say_hello(http, url, headers, b'{"type":"hello"}', timeout_s=10)
    if not isinstance(hello.get("session_id"), str):
        raise RuntimeError(f"device {idx}: bad hello reply {hello!r}")
    return Device(ws, header.replace(":", ""), hello["session_id"])


async def connect_all(http: aiohttp.ClientSession, url: str, rep: int, n: int) -> list[Device]:
    """Connect `n` devices in batches of concurrent handshakes."""
    return await in_batches(lambda i: connect_device(http, url, rep, i), n, CONNECT_BATCH)


async def relay_round_trips(dev: Device, count: int, phase: Phase | None, k0: int) -> None:
    """`count` custom round trips on one device; latency = send → message_end envelope."""
    ws, did, sid = dev.ws, dev.device_id, dev.session_id
    for k in range(k0, k0 + count):
        msg = orjson.dumps(
            {"session_id": sid, "type": "custom", "payload": report_payload(did, sid, k)}
        )
        t0 = time.perf_counter_ns()
        await ws.send_frame(msg, WSMsgType.TEXT)
        ok = False
        while True:
            m = await ws.receive()
            if m.type != WSMsgType.TEXT:
                raise RuntimeError(f"device {did}: connection ended ({m.type!r})")
            env = orjson.loads(m.data)
            event = env.get("payload", {}).get("business_response", {}).get("event")
            if event == "message_end":
                ok = True
                break
            if event == "error":
                break
        t1 = time.perf_counter_ns()
        if phase is not None:
            phase.record(ok, t0, t1)


async def direct_round_trips(
    http: aiohttp.ClientSession, url: str, count: int, phase: Phase | None, k0: int
) -> None:
    """`count` POSTs straight to the business; latency = request → message_end event."""
    did = secrets.token_hex(6).upper()
    sid = secrets.token_urlsafe(16)  # the relay's session id has the same length
    for k in range(k0, k0 + count):
        body = orjson.dumps(report_payload(did, sid, k))
        t0 = time.perf_counter_ns()
        ok = False
        async with http.post(url, data=body, headers=HEADERS) as resp:
            buf = b""
            while resp.status == 200 and not ok:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                buf += chunk
                while (end := buf.find(b"\n\n")) >= 0:
                    line, buf = buf[:end], buf[end + 2 :]
                    if line.startswith(b"data:") and (
                        orjson.loads(line[5:]).get("event") == "message_end"
                    ):
                        ok = True
                        break
            t1 = time.perf_counter_ns()
        if phase is not None:
            phase.record(ok, t0, t1)


# ---- phases ---------------------------------------------------------------------------


@dataclass
class Env:
    """The running peers and the load generator's HTTP sessions."""

    relay: Child
    business: Child
    relay_ws_url: str
    business_url: str
    business_port: int
    ws_http: aiohttp.ClientSession
    cap_s: float
    py_spy: str | None = None
    samples: dict[str, Path] = field(default_factory=dict)
    gc_stats: Path | None = None


async def timed(
    env: Env, phase: Phase, workers: list[Callable[[], Awaitable[None]]], sample_as: str = ""
) -> None:
    """Run `workers` concurrently under the duration cap, sampling CPU and TCP around them;
    with `sample_as`, py-spy records the relay's stacks during the phase."""
    spy = sample_relay(env, sample_as)
    gc0 = await relay_gc_snapshot(env)
    lg0 = LOADGEN_GC.snapshot(count_objects=False)
    procs = {"relay": env.relay.pid, "business": env.business.pid}
    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    gen0 = self_cpu_seconds()
    tw0 = tcp_states(env.business_port)["time_wait"]
    t0 = time.perf_counter()
    if await run_capped((w() for w in workers), env.cap_s):
        phase.capped = True
        progress(f"  {phase.side}: duration cap {env.cap_s:.0f}s reached, stopping")
    phase.wall_s = time.perf_counter() - t0
    if spy is not None:
        spy.stop(timeout_s=30.0)
    phase.cpu_s = {name: cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
    phase.cpu_s["loadgen"] = self_cpu_seconds() - gen0
    tcp = tcp_states(env.business_port)
    phase.business_conns_closed = tcp["time_wait"] - tw0
    phase.business_conns_open = tcp["established"] // 2  # both ends are on this machine
    phase.loadgen_gc = gc_delta(lg0, LOADGEN_GC.snapshot(count_objects=False))
    gc1 = await relay_gc_snapshot(env)
    if gc0 is not None and gc1 is not None:
        phase.relay_gc = gc_delta(gc0, gc1)
    env.relay.check_alive()
    env.business.check_alive()


async def relay_gc_snapshot(env: Env) -> dict[str, Any] | None:
    """Cumulative GC figures of a relay run under bench._probe (None otherwise)."""
    if env.gc_stats is None:
        return None
    return await probe_report(env.relay.pid, env.gc_stats)


def sample_relay(env: Env, name: str) -> Child | None:
    """Start `py-spy record` on the relay, once per mode, when --py-spy was given."""
    if not name or env.py_spy is None or name in env.samples:
        return None
    out = RESULTS / f"passthrough-relay-{name}.folded"
    env.samples[name] = out
    return start_py_spy(env.py_spy, f"passthrough-py-spy-{name}", env.relay.pid, out)


async def run_relay(env: Env, rep: int, n: int, per_device: int, warmup: int, mode: str) -> Phase:
    """Connect `n` devices, warm up, then time `per_device` round trips on each, concurrently."""
    devices = await connect_all(env.ws_http, env.relay_ws_url, rep, n)
    try:
        await asyncio.gather(*(relay_round_trips(d, warmup, None, 0) for d in devices))
        phase = Phase("relay", n, n * per_device)
        await timed(
            env,
            phase,
            [functools.partial(relay_round_trips, d, per_device, phase, warmup) for d in devices],
            sample_as=mode,
        )
        return phase
    finally:
        await asyncio.gather(*(d.ws.close() for d in devices), return_exceptions=True)


async def run_direct(env: Env, n: int, per_device: int, warmup: int) -> Phase:
    """The baseline: `n` concurrent clients POSTing straight to the business."""
    url = env.business_url
    # A fresh pool per phase: idle pooled connections closing later would blur the
    # TIME_WAIT count of the next phase.
    async with unlimited_session(auto_decompress=False) as http:
        await asyncio.gather(*(direct_round_trips(http, url, warmup, None, 0) for _ in range(n)))
        phase = Phase("direct", n, n * per_device)
        await timed(
            env,
            phase,
            [functools.partial(direct_round_trips, http, url, per_device, phase, warmup)] * n,
        )
    return phase


def compare(direct: Phase, relay: Phase) -> dict[str, Any]:
    """One repetition, side by side, with the relay's added latency and CPU cost."""
    d, rl = direct.summary(), relay.summary()
    return {
        "direct": d,
        "relay": rl,
        "relay_added_p50_ms": r(rl["p50_ms"] - d["p50_ms"]),
        "relay_added_p99_ms": r(rl["p99_ms"] - d["p99_ms"]),
        "p50_ratio": r(rl["p50_ms"] / d["p50_ms"] if d["p50_ms"] else float("nan")),
        "throughput_ratio": r(
            rl["throughput_per_s"] / d["throughput_per_s"] if d["throughput_per_s"] else 0.0
        ),
        "relay_cpu_us_per_rt": rl["relay_cpu_us_per_rt"],
        # The business is a bare aiohttp server doing one request per round trip; its CPU in
        # the same phase is a baseline that moves with the machine's speed, unlike 250 us.
        "relay_cpu_per_business_cpu": r(
            rl["relay_cpu_us_per_rt"] / rl["business_cpu_us_per_rt"]
            if rl["business_cpu_us_per_rt"]
            else float("nan"),
            2,
        ),
    }


def medians_by_side(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every number across repetitions (per side and for the comparison)."""
    out: dict[str, Any] = {}
    for key, value in reps[0].items():
        if isinstance(value, dict):
            out[key] = medians([rep[key] for rep in reps])
        elif isinstance(value, int | float):
            out[key] = r(median([rep[key] for rep in reps]))
    return out


async def run_mode(
    env: Env, name: str, n: int, per_device: int, warmup: int, repeat: int, rep_base: int
) -> dict[str, Any]:
    """`repeat` paired repetitions; the side that goes first alternates to spread drift."""
    reps: list[dict[str, Any]] = []
    for i in range(repeat):
        order = ("direct", "relay") if i % 2 == 0 else ("relay", "direct")
        got: dict[str, Phase] = {}
        for side in order:
            progress(f"{name} rep {i + 1}/{repeat}: {side}, {n} devices x {per_device}")
            if side == "relay":
                got[side] = await run_relay(env, rep_base + i, n, per_device, warmup, name)
            else:
                got[side] = await run_direct(env, n, per_device, warmup)
            s = got[side].summary()
            progress(
                f"  {side}: {s['round_trips']} rt in {s['wall_s']:.2f}s, "
                f"{s['throughput_per_s']:.0f}/s, p50 {s['p50_ms']:.3f} ms, "
                f"p99 {s['p99_ms']:.3f} ms, relay cpu {s['relay_cpu_us_per_rt']:.0f} us/rt"
            )
        reps.append(compare(got["direct"], got["relay"]))
    return {
        "devices": n,
        "round_trips_per_device": per_device,
        "warmup_per_device": warmup,
        "repetitions": reps,
        "median": medians_by_side(reps),
    }


def goals(modes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, checked on the medians of each mode."""
    out = []
    for name, mode in modes.items():
        med = mode["median"]
        out.append(
            {
                "mode": name,
                "goal": f"relay-added p50 <= {GOAL_ADDED_P50_MS} ms",
                "value": med["relay_added_p50_ms"],
                "pass": med["relay_added_p50_ms"] <= GOAL_ADDED_P50_MS,
            }
        )
        out.append(
            {
                "mode": name,
                "goal": f"relay CPU <= {GOAL_RELAY_CPU_US:.0f} us per round trip",
                "value": med["relay_cpu_us_per_rt"],
                "pass": med["relay_cpu_us_per_rt"] <= GOAL_RELAY_CPU_US,
            }
        )
    return out


# ---- orchestration --------------------------------------------------------------------


def start_peers(
    started: list[Child], profile: Path | None, gc_stats: Path | None, args: argparse.Namespace
) -> tuple[Child, Child, int, int]:
    """Start the reference business and the relay pointed at it; wait until both serve."""
    business, bport = start_business(started, "passthrough-business")
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    probe = ["-m", "bench._probe", "relay"] if gc_stats else ["-m", "relay"]
    env = relay_env(bport)
    if args.log != "off":  # a line per connect and per round trip (README.md, "Logs")
        env |= {"RELAY__LOG__LEVEL": "INFO", "RELAY__LOG__FORMAT": args.log}
    if gc_stats:
        env["BENCH_PROBE_OUT"] = str(gc_stats)
    if args.gc_threshold:
        env["BENCH_GC_THRESHOLD"] = args.gc_threshold
    if args.gc_freeze:
        env["BENCH_PREIMPORT"] = "relay.run.cli"
        env["BENCH_GC_FREEZE"] = "1"
    relay, rport = start_relay(started, "passthrough-relay", env, launcher=[*prof, *probe])
    return business, relay, bport, rport


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the peers, run both modes, stop the peers; return the JSON document."""
    profile = RESULTS / "passthrough-relay.prof" if args.profile_relay else None
    wrap = args.gc_stats or args.gc_threshold or args.gc_freeze
    gc_stats = RESULTS / "passthrough-relay-gc.json" if wrap else None
    modes: dict[str, dict[str, Any]] = {}
    with children() as started:
        business, relay, bport, rport = start_peers(started, profile, gc_stats, args)
        progress(f"business pid {business.pid} :{bport}, relay pid {relay.pid} :{rport}")
        async with unlimited_session() as ws_http:
            env = Env(
                relay,
                business,
                device_url(rport),
                f"http://127.0.0.1:{bport}/chat",
                bport,
                ws_http,
                args.duration_cap_s,
                args.py_spy,
                gc_stats=gc_stats,
            )
            serial = functools.partial(
                run_mode, env, "serial", 1, args.serial_round_trips, 20, args.repeat, 100
            )
            if args.also_serial and args.serial_order == "first":
                modes["serial"] = await serial()
            modes["concurrent"] = await run_mode(
                env,
                "concurrent",
                args.devices,
                args.round_trips_per_device,
                args.warmup,
                args.repeat,
                0,
            )
            if args.also_serial and args.serial_order == "last":
                modes["serial"] = await serial()
    doc: dict[str, Any] = envelope("passthrough", vars(args)) | {
        "modes": modes,
        "goals": goals(modes),
        "profiled": bool(profile),
        "relay_wrapped_for_gc_stats": bool(gc_stats),
    }
    if profile is not None:
        doc["relay_profile_top"] = profile_top(profile)
    if env.samples:
        doc["relay_samples"] = {
            mode: folded_top(path) for mode, path in env.samples.items() if path.exists()
        }
    return doc


def profile_top(path: Path, n: int = 30) -> list[str]:
    """The `n` functions with the most own time in the relay's cProfile dump."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows:
        where = f"{Path(filename).name}:{line}({func})"
        out.append(
            f"{100 * tottime / total:5.1f}% own {tottime:7.3f}s cum {cumtime:7.3f}s "
            f"{ncalls:>9} calls {where}"
        )
    return out


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    lines = []
    for name, mode in doc["modes"].items():
        med = mode["median"]
        lines.append(
            f"{name}: {mode['devices']} devices x {mode['round_trips_per_device']} round trips, "
            f"median of {len(mode['repetitions'])} repetitions"
        )
        lines.append(f"  {'side':<7}{'rt':>8}{'rt/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
        for side in ("direct", "relay"):
            s = med[side]
            lines.append(
                f"  {side:<7}{s['round_trips']:>8.0f}{s['throughput_per_s']:>9.0f}"
                f"{s['p50_ms']:>9.3f}{s['p90_ms']:>9.3f}{s['p99_ms']:>9.3f}"
            )
        lines.append(
            f"  relay-added p50 {med['relay_added_p50_ms']:.3f} ms (ratio {med['p50_ratio']:.2f}x),"
            f" throughput ratio {med['throughput_ratio']:.2f}, "
            f"relay CPU {med['relay_cpu_us_per_rt']:.0f} us/rt "
            f"({med['relay_cpu_per_business_cpu']:.2f}x the business's)"
        )
    for g in doc["goals"]:
        verdict = "PASS" if g["pass"] else "FAIL"
        lines.append(f"goal [{g['mode']}] {g['goal']}: {g['value']} -> {verdict}")
    for row in doc.get("relay_profile_top", []):
        lines.append("  " + row)
    for mode, summary in doc.get("relay_samples", {}).items():
        lines.append(f"py-spy, relay, {mode} ({summary['samples']} samples), self time:")
        lines += ["  " + row for row in summary["self"][:15]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("passthrough", __doc__)
    p.add_argument("--devices", type=int, default=1000, help="concurrent devices (and clients)")
    p.add_argument("--round-trips-per-device", type=int, default=20)
    p.add_argument("--warmup", type=int, default=1, help="untimed round trips per device first")
    p.add_argument("--duration-cap-s", type=float, default=120.0, help="cap per timed phase")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--log",
        choices=("off", "text", "json"),
        default="off",
        help="the relay's log: off (WARNING, the default) or INFO in the text or JSON format",
    )
    p.add_argument(
        "--also-serial",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run one device, sequential round trips (latency without queueing)",
    )
    p.add_argument("--serial-round-trips", type=int, default=1000)
    p.add_argument(
        "--serial-order",
        choices=("first", "last"),
        default="first",
        help="serial mode before the concurrent one (default: on a relay whose business "
        "connection pool was not grown by the 1000-device burst) or after it",
    )
    p.add_argument(
        "--profile-relay",
        action="store_true",
        help="run the relay under cProfile (numbers then inflated; for finding hot spots)",
    )
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        help="py-spy binary: sample the relay during the first relay phase of each mode",
    )
    p.add_argument(
        "--gc-stats",
        action="store_true",
        help="run the relay under bench._probe and report its GC time per round trip",
    )
    p.add_argument(
        "--gc-threshold",
        metavar="G0,G1,G2",
        help="experiment: the relay's gc.set_threshold (implies --gc-stats)",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() in the relay after its imports (implies --gc-stats)",
    )
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.round_trips_per_device, args.repeat, args.serial_round_trips)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    args = parse_args(argv)
    LOADGEN_GC.install()
    return run_main(run, table, args)


if __name__ == "__main__":
    sys.exit(main())
