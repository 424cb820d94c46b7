"""Diagnostics only: run a server module with garbage-collector and memory accounting.

    python -m bench._probe MODULE [ARGS...]     e.g.  python -m bench._probe relay serve …

runs MODULE as `python -m MODULE ARGS…` would (the relay's own code, unmodified), plus:
every collection's CPU time is counted through `gc.callbacks`, and on SIGUSR1 a JSON report
is written to the file named by BENCH_PROBE_OUT (cumulative GC figures; with
BENCH_PROBE_DETAIL=1 also live objects by type and, when tracemalloc is on, e.g. with
PYTHONTRACEMALLOC=1, the allocation sites grown since the first report).

With BENCH_LOOP_TICK_MS set, a task on the module's event loop (any loop started through
asyncio.Runner: asyncio.run, uvloop.run) wakes every that many milliseconds; the report then
has the loop's worst and p99 pause since the previous report (`loop`: the gaps between
wake-ups beyond the period; the gap that spans a report, which itself stalls the loop, is
left out).

Experiments for proposed changes: BENCH_PREIMPORT=mod1,mod2 imports modules first;
BENCH_GC_FREEZE=1 then calls `gc.freeze()`, so collections stop traversing import-time
objects (pypinyin's dictionaries alone are ~190,000 tracked lists); BENCH_GC_THRESHOLD=
"g0,g1,g2" sets other collector thresholds.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import importlib
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
from collections.abc import Coroutine
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from bench._gcstats import GCStats

_STATS = GCStats()
_FIRST: list[tracemalloc.Snapshot] = []
_T = TypeVar("_T")


class LoopTicker:
    """The gaps between a periodic task's wake-ups, less the period: the loop's pauses."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.gaps: list[float] = []
        self._skip = True

    async def run(self) -> None:
        """Wake every period_s until cancelled, recording each late wake-up."""
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.period_s)
            now = time.perf_counter()
            if self._skip:
                self._skip = False
            else:
                self.gaps.append(max(0.0, now - last - self.period_s))
            last = now

    def take(self) -> dict[str, Any]:
        """The pauses since the last take, and start again (the gap spanning now not counted)."""
        gaps, self.gaps, self._skip = sorted(self.gaps), [], True
        if not gaps:
            return {"ticks": 0, "max_gap_ms": None, "p99_gap_ms": None}
        p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
        return {"ticks": len(gaps), "max_gap_ms": gaps[-1] * 1000, "p99_gap_ms": p99 * 1000}


_TICKER: list[LoopTicker] = []


def _tick_every_run(period_s: float) -> None:
    """Start a LoopTicker on every loop asyncio.Runner runs (the module is left unchanged)."""
    ticker = LoopTicker(period_s)
    _TICKER.append(ticker)
    run = asyncio.Runner.run

    def ticked_run(self: asyncio.Runner, coro: Coroutine[Any, Any, _T], **kw: Any) -> _T:
        async def with_ticker() -> _T:
            task = asyncio.get_running_loop().create_task(ticker.run())
            try:
                return await coro
            finally:
                task.cancel()

        return run(self, with_ticker(), **kw)

    asyncio.Runner.run = ticked_run  # type: ignore[method-assign]


def _report() -> dict[str, Any]:
    doc: dict[str, Any] = _STATS.snapshot() | {"threshold": list(gc.get_threshold())}
    if _TICKER:
        doc["loop"] = _TICKER[0].take()
    if os.environ.get("BENCH_PROBE_DETAIL") == "1":
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        doc["types"] = dict(counts)
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if not _FIRST:
                _FIRST.append(snap)
            diff = snap.compare_to(_FIRST[0], "lineno")[:40]
            doc["tracemalloc_growth"] = [
                {"where": str(d.traceback[0]), "size_diff": d.size_diff, "count_diff": d.count_diff}
                for d in diff
            ]
    return doc


def _dump(_sig: int, _frame: FrameType | None) -> None:
    path = os.environ.get("BENCH_PROBE_OUT")
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(_report()))
        tmp.replace(path)


def run() -> None:
    """Set up the accounting and the experiments, then run the module as __main__."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench._probe MODULE [ARGS...]")
    module = sys.argv[1]
    for name in filter(None, os.environ.get("BENCH_PREIMPORT", "").split(",")):
        importlib.import_module(name)
    if threshold := os.environ.get("BENCH_GC_THRESHOLD"):
        g0, g1, g2 = (int(x) for x in threshold.split(","))
        gc.set_threshold(g0, g1, g2)
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()
    if tick_ms := os.environ.get("BENCH_LOOP_TICK_MS"):
        _tick_every_run(float(tick_ms) / 1000)
    _STATS.install()
    signal.signal(signal.SIGUSR1, _dump)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run()
