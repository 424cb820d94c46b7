"""Scheduler accounting from /proc/<pid>/task/<tid>/schedstat: how long threads ran and how
long they were runnable but waited for a CPU (the run-queue wait).

On a shared 2-core machine the run-queue wait is the direct measure of noise: time the
benchmark's threads were ready to run while someone else's process had the cores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def thread_sched(pid: int, tid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds waiting on the run queue) of one thread."""
    fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


def process_sched(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds waiting on the run queue) summed over a process's threads."""
    run = wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0]) / 1e9
            wait += int(fields[1]) / 1e9
    return run, wait


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from the ppid field of /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def tree_sched(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds waiting on the run queue) of `pid` and all its descendants;
    a process that exits meanwhile is left out."""
    run = wait = 0.0
    for p in process_tree(pid):
        try:
            cpu, queued = process_sched(p)
        except OSError:
            continue
        run += cpu
        wait += queued
    return run, wait
