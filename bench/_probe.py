"""Diagnostics only: run a server module with garbage-collector and memory accounting.

    python -m bench._probe MODULE [ARGS...]     e.g.  python -m bench._probe relay serve …

runs MODULE as `python -m MODULE ARGS…` would (the relay's own code, unmodified), plus:
every collection's CPU time is counted through `gc.callbacks`, and on SIGUSR1 a JSON report
is written to the file named by BENCH_PROBE_OUT (cumulative GC figures; with
BENCH_PROBE_DETAIL=1 also live objects by type and, when tracemalloc is on, e.g. with
PYTHONTRACEMALLOC=1, the allocation sites grown since the first report).

Experiments for proposed changes: BENCH_PREIMPORT=mod1,mod2 imports modules first;
BENCH_GC_FREEZE=1 then calls `gc.freeze()`, so collections stop traversing import-time
objects (pypinyin's dictionaries alone are ~190,000 tracked lists); BENCH_GC_THRESHOLD=
"g0,g1,g2" sets other collector thresholds.
"""

from __future__ import annotations

import collections
import gc
import importlib
import json
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

from bench._gcstats import GCStats

_STATS = GCStats()
_FIRST: list[tracemalloc.Snapshot] = []


def _report() -> dict[str, Any]:
    doc: dict[str, Any] = _STATS.snapshot() | {"threshold": list(gc.get_threshold())}
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
    _STATS.install()
    signal.signal(signal.SIGUSR1, _dump)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run()
