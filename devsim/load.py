"""The load generator (`--devices N --turns K`): N devices with distinct ids connect in
batches, each runs K turns, and the run ends with a table and a JSON summary (turns/s,
latency percentiles, errors).

Bounded: devsim.cli.MAX_DEVICES devices, MAX_TURNS turns each, `--timeout` per
connection and per turn, `--max-duration` for the whole run; only `--url` is contacted.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
import orjson

from devsim.conn import HandshakeFailed, connect
from devsim.options import Options
from devsim.work import EXIT_FAILED_TURNS, EXIT_OK, EXIT_TIMEOUT, STAGES, Plan, Printer, Trace

PROGRESS_S = 1.0
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


@dataclass(slots=True)
class Stats:
    """Counts and latencies of a load run, updated by every device task."""

    devices: int
    turns_per_device: int
    connected: int = 0
    ok: int = 0
    failed: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def add_turn(self, trace: Trace) -> None:
        """A finished turn: its latencies when it went well, its error kinds otherwise."""
        if problems := trace.problems():
            self.turn_failed(problems)
            return
        self.ok += 1
        for stage, ms in trace.latencies_ms().items():
            self.latencies.setdefault(stage, []).append(ms)

    def turn_failed(self, kinds: list[str]) -> None:
        """A turn that failed, with each of its error kinds."""
        self.failed += 1
        self.errors.update(kinds)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        """The JSON summary of the run."""
        wanted = self.devices * self.turns_per_device
        stages = [s for s in ("connect", *STAGES) if s in self.latencies]
        return {
            "devices": self.devices,
            "connected": self.connected,
            "turns_requested": wanted,
            "turns": self.ok,
            "failed": self.failed,
            "not_run": wanted - self.ok - self.failed,
            "elapsed_s": round(elapsed_s, 3),
            "turns_per_s": round(self.ok / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": {s: describe(self.latencies[s]) for s in stages},
            "errors": dict(sorted(self.errors.items())),
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def describe(values: list[float]) -> dict[str, float]:
    """Count, p50, p90, p99 and max of latency samples (ms)."""
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    out |= {name: round(percentile(ordered, q), 1) for name, q in PERCENTILES}
    return out | {"max": round(ordered[-1], 1)}


def random_mac() -> str:
    """A random locally administered MAC address, the form firmware sends as Device-Id."""
    return ":".join(f"{b:02X}" for b in b"\x02" + secrets.token_bytes(5))


def device_ids(base: str, n: int) -> list[str]:
    """`n` distinct device ids: a MAC counts up from `base`, any other id gets a suffix."""
    base = base or random_mac()
    if not _MAC.match(base):
        return [f"{base}-{i}" for i in range(n)]
    start = int(re.sub(r"[:-]", "", base), 16)
    digits = [f"{(start + i) % (1 << 48):012X}" for i in range(n)]
    return [":".join(d[j : j + 2] for j in range(0, 12, 2)) for d in digits]


def table(s: dict[str, Any]) -> list[str]:
    """A load summary as readable lines."""
    lines = [
        f"devices {s['devices']} (connected {s['connected']}) · turns {s['turns']} ok, "
        f"{s['failed']} failed, {s['not_run']} not run of {s['turns_requested']} · "
        f"{s['elapsed_s']:.1f} s · {s['turns_per_s']:.2f} turns/s",
        f"{'stage (ms)':<12} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}",
    ]
    for stage, d in s["latency_ms"].items():
        cells = " ".join(f"{d[k]:>8.1f}" for k in ("p50", "p90", "p99", "max"))
        lines.append(f"{stage:<12} {d['n']:>6.0f} {cells}")
    errors = ", ".join(f"{k} ×{v}" for k, v in s["errors"].items())
    return [*lines, f"errors: {errors or 'none'}"]


async def run_load(opts: Options, plan: Plan, out: TextIO, err: TextIO) -> int:
    """Run the load; 0 when every turn succeeded, 3 when some did not, 2 past max duration."""
    stats = Stats(opts.devices, opts.turns)
    loop = asyncio.get_running_loop()
    start = loop.time()
    code = EXIT_OK
    # One connection per device: no pool limit, nothing kept alive between requests.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        progress = loop.create_task(_progress(stats, err, start))
        try:
            async with asyncio.timeout(opts.max_duration), asyncio.TaskGroup() as tg:
                for i, device_id in enumerate(device_ids(opts.device_id, opts.devices)):
                    delay = i // opts.ramp_batch * opts.ramp_interval
                    tg.create_task(_device(session, opts, plan, device_id, delay, stats))
        except TimeoutError:
            stats.errors["max_duration"] += 1
            code = EXIT_TIMEOUT
        finally:
            progress.cancel()
            await asyncio.wait([progress])
    summary = stats.summary(loop.time() - start)
    _progress_line(stats, err, start, end="\n")
    print("\n".join(table(summary)), file=err if opts.json else out)
    print(orjson.dumps(summary).decode(), file=out, flush=True)
    if code == EXIT_OK and (stats.failed or stats.errors or summary["not_run"]):
        code = EXIT_FAILED_TURNS
    return code


async def _device(
    session: aiohttp.ClientSession,
    opts: Options,
    plan: Plan,
    device_id: str,
    delay: float,
    stats: Stats,
) -> None:
    await asyncio.sleep(delay)  # the ramp: batches of --ramp-batch every --ramp-interval
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(opts.timeout):
            conn = await connect(session, opts, device_id, Printer(None, t0), explain=False)
    except HandshakeFailed as exc:
        stats.errors[exc.kind] += 1
        return
    except TimeoutError:
        stats.errors["connect_timeout"] += 1
        return
    except (aiohttp.ClientError, OSError):  # dropped during the hello exchange
        stats.errors["connect"] += 1
        return
    stats.connected += 1
    stats.latencies.setdefault("connect", []).append((loop.time() - t0) * 1000)
    try:
        for _ in range(opts.turns):
            try:
                async with asyncio.timeout(opts.timeout):
                    trace = await conn.turn(plan, opts)
            except TimeoutError:
                stats.turn_failed(["timeout"])
                break  # its answer may still be arriving: this device stops here
            except (aiohttp.ClientError, OSError):
                stats.turn_failed(["send_failed"])
                break
            stats.add_turn(trace)
            if "closed" in trace.errors:
                break
    finally:
        await conn.close()


async def _progress(stats: Stats, err: TextIO, start: float) -> None:
    end = "\r" if err.isatty() else "\n"
    while True:
        await asyncio.sleep(PROGRESS_S)
        _progress_line(stats, err, start, end)


def _progress_line(stats: Stats, err: TextIO, start: float, end: str) -> None:
    elapsed = asyncio.get_running_loop().time() - start
    print(
        f"devsim: {elapsed:6.1f} s  connected {stats.connected}/{stats.devices}  "
        f"turns {stats.ok + stats.failed}/{stats.devices * stats.turns_per_device}  "
        f"errors {sum(stats.errors.values())}",
        file=err,
        end=end,
        flush=True,
    )
