"""Garbage-collector accounting through `gc.callbacks`: collections, CPU seconds and objects
collected per generation. CPU time (not wall time), so preemption on a busy machine does not
count as collector work."""

from __future__ import annotations

import gc
import time
from typing import Any


class GCStats:
    """Cumulative figures since `install()`."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.cpu_s = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._t0 = 0.0

    def install(self) -> None:
        """Start counting."""
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
            return
        gen = info["generation"]
        self.collections[gen] += 1
        self.cpu_s[gen] += time.process_time() - self._t0
        self.collected[gen] += info["collected"]

    def snapshot(self, *, count_objects: bool = True) -> dict[str, Any]:
        """The figures so far (plus the number of tracked objects, which costs a scan)."""
        return {
            "collections": list(self.collections),
            "cpu_s": list(self.cpu_s),
            "collected": list(self.collected),
            "objects": len(gc.get_objects()) if count_objects else -1,
        }


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots."""
    return {
        key: [b - a for a, b in zip(before[key], after[key], strict=True)]
        for key in ("collections", "cpu_s", "collected")
    } | {"objects": after["objects"]}
