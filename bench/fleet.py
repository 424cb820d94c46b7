"""Presence at fleet scale: what one Redis does for N devices on M nodes, before and after.

Simulated nodes (`RedisCluster` objects in one process, no WebSockets, no relay) register
devices straight through the cluster layer against a private redis-server (`--save ""
--appendonly no`, loopback, a free port). Measured, for the code of a git revision
(`--before`, extracted with `git archive`) and for this checkout, one after the other in
one run, each on a fresh redis-server:

- churn: Redis commands per connect and per disconnect (INFO `total_commands_processed`
  deltas, which count the commands a Lua script runs; script calls, the client's round
  trips, beside them), heartbeats pushed out of the way;
- steady: with `--devices` present on `--nodes` nodes at the configured heartbeat, Redis
  commands per second over `--window-s` once a heartbeat has passed; Redis memory per
  present device (INFO `used_memory` delta over the registration); registrations per second;
  with `--latency-samples N`, then lookup, listing-page (100) and cross-node push latencies
  (p50, p99), one call at a time.

With `--cluster`, this checkout (and the `--before` revision, first) is measured again on
a local Redis Cluster of 3 primaries (no replicas; `redis-server --cluster-enabled yes`,
`redis-cli --cluster create`), its figures summed over the shards, beside the single Redis.

    python -m bench.fleet [--devices 100000] [--nodes 10] [--before main] [--cluster]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md and
docs/scale.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import (
    PYTHON,
    ROOT,
    Child,
    children,
    envelope,
    free_port,
    progress,
    r,
    start_child,
    wait_tcp,
)

_PACKAGES = ("relay", "protocol", "aioutil")  # what the cluster layer imports
_NODES_SCRIPT = ROOT / "bench" / "_fleet_nodes.py"


def extract(rev: str, into: Path) -> Path:
    """The packages the cluster layer needs, as of git revision `rev`, under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(  # noqa: S603 - fixed read-only git command
        ["git", "archive", rev, *_PACKAGES], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)  # noqa: S607
    return into


def _redis(name: str, tmp: str, started: list[Child], extra: list[str]) -> str:
    """A started redis-server (in its own directory under `tmp`); its URL."""
    port = free_port()
    directory = Path(tmp) / name
    directory.mkdir()
    redis_args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *extra]
    redis_args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    redis = start_child(name, redis_args)
    started.append(redis)
    wait_tcp(redis, port)
    return f"redis://127.0.0.1:{port}"


def _cluster(name: str, tmp: str, started: list[Child]) -> list[str]:
    """A Redis Cluster of 3 primaries; their URLs."""
    urls = []
    for i in range(3):
        extra = ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
        urls.append(_redis(f"{name}-{i}", tmp, started, extra))
    subprocess.run(  # noqa: S603 - fixed arguments
        ["redis-cli", "--cluster", "create", *(u.removeprefix("redis://") for u in urls)]  # noqa: S607
        + ["--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every primary agrees the cluster is ok
        infos = [
            subprocess.run(  # noqa: S603 - fixed arguments
                ["redis-cli", "-u", u, "cluster", "info"],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for u in urls
        ]
        if all("cluster_state:ok" in i for i in infos):
            return urls
        time.sleep(0.1)
    raise RuntimeError("the cluster did not become ok")


def measure(
    name: str, tree: Path, params: dict[str, Any], tmp: str, mode: str = "single"
) -> dict[str, Any]:
    """One version's figures: its own redis-server (or cluster), its nodes in a child
    process."""
    with children() as started:
        progress(f"{name}: {params['devices']} devices on {params['nodes']} nodes ({tree})")
        if mode == "cluster":
            shards = _cluster(f"fleet-redis-{name}", tmp, started)
            doc = {**params, "url": ",".join(shards), "shards": shards, "mode": mode}
        else:
            doc = {**params, "url": _redis(f"fleet-redis-{name}", tmp, started, []) + "/0"}
        done = subprocess.run(  # noqa: S603 - fixed argv built by the benchmark
            [PYTHON, str(_NODES_SCRIPT), orjson.dumps(doc).decode()],
            cwd=tree,
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{name}: nodes failed ({done.returncode}); see their stderr above")
    figures: dict[str, Any] = orjson.loads(done.stdout)
    for part in figures.values():
        for k, v in part.items():
            part[k] = r(v, 2) if isinstance(v, float) else v
    progress(f"{name}: {figures}")
    return figures


def _ratios(b: dict[str, Any], a: dict[str, Any]) -> dict[str, float]:
    """Before over after, for the steady figures (registrations: after over before)."""
    return {
        "commands_per_s": r(b["commands_per_s"] / max(a["commands_per_s"], 1e-9), 1),
        "memory_bytes_per_device": r(
            b["memory_bytes_per_device"] / a["memory_bytes_per_device"], 2
        ),
        "registered_per_s_after_over_before": r(a["registered_per_s"] / b["registered_per_s"], 2),
    }


def _latency_goals(side: str, s: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #16's goals for a large fleet (its case: 1 M devices on the local cluster)."""
    checks = [
        ("register >= 20k devices/s", s["registered_per_s"], s["registered_per_s"] >= 20_000),
        ("lookup p99 <= 2 ms", s["lookup"]["p99_ms"], s["lookup"]["p99_ms"] <= 2),
        ("listing page of 100 p99 <= 20 ms", (v := s["list_page_100"]["p99_ms"]), v <= 20),
    ]
    if "cross_node_push" in s:
        push = s["cross_node_push"]["p99_ms"]
        checks.append(("cross-node push p99 <= 10 ms", push, push <= 10))
    return [{"goal": f"{side}: {g}", "value": r(v, 2), "pass": ok} for g, v, ok in checks]


def goals(after: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #16's goals, judged on this run's figures (the steady one as measured: set
    --devices 100000 --nodes 10 and the default heartbeat for the issue's case)."""
    steady = after["steady"]["commands_per_s"]
    churn = after["churn"]
    worst = max(churn["commands_per_connect"], churn["commands_per_disconnect"])
    mem = after["steady"]["memory_bytes_per_device"]
    case = f"{params['devices']} devices, {params['nodes']} nodes, beat {params['heartbeat_s']} s"
    return [
        {"goal": f"steady commands/s < 100 ({case})", "value": steady, "pass": steady < 100},
        {"goal": "commands per connect/disconnect <= 3", "value": worst, "pass": worst <= 3},
        {"goal": "memory per present device <= 200 B", "value": mem, "pass": mem <= 200},
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both versions, one after the other."""
    params = {
        "devices": args.devices,
        "nodes": args.nodes,
        "churn": args.churn,
        "heartbeat_s": args.heartbeat_s,
        "ttl_s": args.ttl_s,
        "window_s": args.window_s,
        "latency_samples": args.latency_samples,
    }
    doc = envelope("fleet", vars(args))  # now: its load average is the one at the start
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = extract(args.before, Path(tmp) / "before") if args.before else None
        sides: dict[str, Any] = {}
        if before_tree is not None:
            sides["before"] = measure("before", before_tree, params, tmp)
        sides["after"] = measure("after", ROOT, params, tmp)
        if args.cluster and before_tree is not None:
            sides["cluster_before"] = measure("cluster_before", before_tree, params, tmp, "cluster")
        if args.cluster:
            sides["cluster"] = measure("cluster", ROOT, params, tmp, "cluster")
    doc |= sides
    for before, after, name in (
        ("before", "after", "before_over_after"),
        ("cluster_before", "cluster", "cluster_before_over_after"),
    ):
        if before in sides:
            doc[name] = _ratios(sides[before]["steady"], sides[after]["steady"])
    doc["goals"] = goals(sides["after"], params)
    for side in ("after", "cluster"):
        if side in sides and "lookup" in sides[side]["steady"]:
            doc["goals"] += _latency_goals(side, sides[side]["steady"])
    return doc


def table(doc: dict[str, Any]) -> str:
    """Before and after, side by side, then the goals."""
    p = doc["params"]
    lines = [
        f"fleet: {p['devices']} devices on {p['nodes']} nodes, heartbeat {p['heartbeat_s']} s",
        f"  {'':<15}{'cmd/s':>10}{'scripts/s':>11}{'B/device':>10}{'reg/s':>9}"
        f"{'cmd/conn':>10}{'cmd/disc':>10}",
    ]
    for side in ("before", "after", "cluster_before", "cluster"):
        if side in doc:
            s, c = doc[side]["steady"], doc[side]["churn"]
            lines.append(
                f"  {side:<15}{s['commands_per_s']:>10.1f}{s['scripts_per_s']:>11.1f}"
                f"{s['memory_bytes_per_device']:>10.0f}{s['registered_per_s']:>9.0f}"
                f"{c['commands_per_connect']:>10.2f}{c['commands_per_disconnect']:>10.2f}"
            )
    return "\n".join([*lines, *goal_lines(doc["goals"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("fleet", __doc__)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--churn", type=int, default=10_000, help="devices connected, then gone")
    p.add_argument("--heartbeat-s", type=float, default=10.0)
    p.add_argument("--ttl-s", type=float, default=30.0)
    p.add_argument("--window-s", type=float, default=30.0, help="steady-state window")
    p.add_argument("--before", default="main", help="git revision to compare; '' for none")
    p.add_argument("--cluster", action="store_true", help="also on a local 3-shard cluster")
    p.add_argument(
        "--latency-samples", type=int, default=0, help="lookups and pushes timed (0: none)"
    )
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.nodes, args.churn)
    if not 0 < args.heartbeat_s < args.ttl_s or args.window_s <= 0:
        p.error("need 0 < heartbeat-s < ttl-s and a positive window-s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
