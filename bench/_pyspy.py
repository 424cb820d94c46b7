"""Diagnostics: py-spy sampling a relay's stacks during a phase, and the summary of what it
recorded (raw folded stacks, 250 samples per second, function names without line numbers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import Child, start_child


def start_py_spy(
    py_spy: str, name: str, pid: int, out: Path, duration_s: int | None = None
) -> Child:
    """`py-spy record` of process `pid` into `out`, until it exits or after `duration_s`."""
    args = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--function"]
    args += ["--format", "raw", "--nonblocking"]
    if duration_s is not None:
        args += ["--duration", str(duration_s)]
    return start_child(name, [*args, "--output", str(out)])


def folded_top(path: Path, n: int = 25) -> dict[str, Any]:
    """Summarise py-spy's raw (folded) stacks: share of samples by leaf function (self) and
    by every function on the stack (inclusive), the relay's own packages listed apart."""
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count

    def top(d: dict[str, int], keep: Callable[[str], bool]) -> list[str]:
        rows = sorted(((v, k) for k, v in d.items() if keep(k)), reverse=True)[:n]
        return [f"{100 * v / total:5.1f}% {k}" for v, k in rows]

    ours = ("(relay/", "(bridges/", "(protocol/", "(metrics/", "(asr_tts/")
    return {
        "samples": total,
        "self": top(leaf, lambda _k: True),
        "inclusive_relay_code": top(incl, lambda k: any(p in k for p in ours)),
        "inclusive_all": top(incl, lambda _k: True),
    }
