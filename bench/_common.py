"""Shared benchmark plumbing: subprocesses, /proc readings, percentiles, output.

Everything here is bounded in time: waits poll with a deadline, stops escalate to SIGKILL.
Standard library only: bench.asr_loop_stall's decoder workers import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr, stamped with seconds since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def spawned_children(parent: int) -> list[int]:
    """The processes `parent` started with multiprocessing's "spawn" (decoder workers)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(proc.name))
    return pids


def self_cpu_seconds() -> float:
    """CPU time of this (load generator) process."""
    t = os.times()
    return t.user + t.system


def tcp_states(port: int) -> dict[str, int]:
    """Counts of loopback TCP sockets touching `port`, by state (ESTABLISHED, TIME_WAIT).

    Used to see whether HTTP connections are reused: a closed connection leaves a TIME_WAIT
    socket for 60 s, so the TIME_WAIT delta over a phase counts connections closed in it.
    """
    counts = {"established": 0, "time_wait": 0}
    names = {"01": "established", "06": "time_wait"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                local_port = int(parts[1].rsplit(":", 1)[1], 16)
                remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                state = names.get(parts[3])
                if state is not None and port in (local_port, remote_port):
                    counts[state] += 1
    return counts


@dataclass
class Child:
    """A subprocess the benchmark started and must stop."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's process id (the Python interpreter itself: no shell in between)."""
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the tail of the child's log when it has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's stdout+stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT (graceful), then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} did not stop in {timeout_s:.0f}s: SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout_s)


def start_child(
    name: str, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> Child:
    """Start `args` in `cwd` (the project root), output to bench/results/<name>.log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv built by the benchmark
            list(args), cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return Child(name, proc, log_path)


def wait_http_ok(child: Child, url: str, timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 200, the child dies, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        child.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name}: {url} not ready in {timeout_s:.0f}s")
        time.sleep(0.1)


def wait_tcp(child: Child, port: int, timeout_s: float = 30.0) -> None:
    """Poll until something accepts on 127.0.0.1:`port` (for servers without /healthz)."""
    deadline = time.monotonic() + timeout_s
    while True:
        child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name}: port {port} not open in {timeout_s:.0f}s")
        time.sleep(0.1)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list of children, every one stopped on exit, whatever happens."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


async def run_capped(work: Iterable[Awaitable[Any]], cap_s: float) -> bool:
    """Run `work` concurrently until all of it is done or `cap_s` passes; True when the cap
    cut it short. Every task is cancelled and awaited before this returns."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        async with asyncio.timeout(cap_s):
            await asyncio.gather(*tasks)
    except TimeoutError:
        return True
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return False


async def probe_report(pid: int, path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """Ask a server run under bench._probe for its report (SIGUSR1) and read it."""
    await asyncio.to_thread(path.unlink, missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} wrote no probe report to {path}")
        await asyncio.sleep(0.01)
    report: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_text))
    return report


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile `q` (0-100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    """Median, NaN for an empty sequence."""
    return statistics.median(values) if values else float("nan")


def medians(
    reps: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None, digits: int = 3
) -> dict[str, float]:
    """The median of each number across repetitions: of `keys`, or else of every int or float
    (not bool) in the first repetition, in its order."""
    if keys is None:
        keys = [
            k for k, v in reps[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
        ]
    return {k: r(median([rep[k] for rep in reps]), digits) for k in keys}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def code_version() -> dict[str, Any]:
    """Which relay code was measured: HEAD and the files changed on top of it (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - fixed read-only git command
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout

    changed = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if line[3:] and not line[3:].startswith("bench/")
    ]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes": changed}


def envelope(benchmark: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every result document opens with: which benchmark, when, the command line,
    the machine, the code, the parameters (`benchmark` is its module name under bench)."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m bench.{benchmark}", *sys.argv[1:]]),
        "machine": machine(),
        "code": code_version(),
        "params": params,
    }


def r(x: float, digits: int = 3) -> float:
    """Round for the JSON output (NaN stays NaN)."""
    return round(x, digits)
