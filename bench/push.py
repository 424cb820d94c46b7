"""Cross-node push: through node B to devices on node A, side by side with pushes to A itself.

The benchmark starts a private redis-server (`--save "" --appendonly no`, loopback, a free
port) and two relay processes sharing it (`[redis] url`, node ids bench-a and bench-b). D
devices connect to A. Pushers POST a small command (`{"command": {…}}`,
docs/protocol.md §4) to `/api/v1/devices/{id}/messages`, either on B (published to A's
inbox, delivered there, acknowledged back) or on A (delivered locally), in a closed loop at a
sweep of concurrencies. Per push:

- delivery latency: POST sent -> the device receives the §2.4 envelope carrying it;
- HTTP latency: POST sent -> the answer (`{"delivered": true}` once A confirmed).

    python -m bench.push [--devices 200] [--concurrency 1,8,32,128] [--repeat 3]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from bench._cli import at_least_one, parser, run_main
from bench._common import (
    Child,
    children,
    envelope,
    free_port,
    medians,
    percentile,
    progress,
    r,
    run_capped,
    self_cpu_seconds,
    start_child,
    wait_tcp,
)
from bench._devices import in_batches, mac, say_hello, unlimited_session
from bench._peers import relay_env, start_relay
from bench._sched import process_sched

CONNECT_BATCH = 100
HELLO = b'{"type":"hello","version":1,"transport":"websocket"}'


@dataclass
class Devices:
    """The devices on node A and the pushes they are waiting for."""

    ids: list[str]
    sockets: list[aiohttp.ClientWebSocketResponse]
    waiting: dict[int, asyncio.Future[float]] = field(default_factory=dict)  # seq -> arrival
    stray: int = 0


async def connect(
    http: aiohttp.ClientSession, url: str, idx: int
) -> tuple[str, aiohttp.ClientWebSocketResponse]:
    """One device on node A: handshake, hello, hello reply (§1.1, §1.2)."""
    device = mac(0x02, 0x3C, 0, 0, (idx >> 8) & 255, idx & 255)
    headers = {"Device-Id": device, "Client-Id": f"push-{idx}", "Protocol-Version": "1"}
    ws, _reply = await say_hello(http, url, headers, HELLO)
    return device.replace(":", ""), ws


async def read_device(devs: Devices, ws: aiohttp.ClientWebSocketResponse) -> None:
    """Resolve the waiting push whose `k` the envelope carries (§2.4 `business_response`)."""
    async for msg in ws:
        now = time.perf_counter()
        if msg.type != WSMsgType.TEXT:
            continue
        env = orjson.loads(msg.data)
        payload = env.get("payload") if isinstance(env, dict) else None
        event = payload.get("business_response") if isinstance(payload, dict) else None
        details = event.get("details") if isinstance(event, dict) else None
        k = details.get("k") if isinstance(details, dict) else None
        fut = devs.waiting.get(k) if isinstance(k, int) else None
        if fut is None or fut.done():
            devs.stray += 1
            continue
        fut.set_result(now)


@dataclass
class Phase:
    """One side at one concurrency."""

    side: str
    concurrency: int
    delivery_ms: list[float] = field(default_factory=list)
    http_ms: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    runqueue_wait: float = 0.0  # seconds the relays and redis were ready but had no CPU
    error_kinds: dict[str, int] = field(default_factory=dict)  # status and answer -> count
    delivered_despite_error: int = 0  # the device received a push the API said it did not

    def summary(self) -> dict[str, Any]:
        """Counts, throughput, latency percentiles, CPU per push."""
        d, h = sorted(self.delivery_ms), sorted(self.http_ms)
        n = len(h)
        out: dict[str, Any] = {
            "side": self.side,
            "concurrency": self.concurrency,
            "pushes": n,
            "errors": self.errors,
            "lost": self.lost,
            "wall_s": r(self.wall_s),
            "pushes_per_s": r(n / self.wall_s if self.wall_s else 0.0, 1),
            "delivery_p50_ms": r(percentile(d, 50)),
            "delivery_p99_ms": r(percentile(d, 99)),
            "http_p50_ms": r(percentile(h, 50)),
            "http_p99_ms": r(percentile(h, 99)),
            "http_max_ms": r(h[-1] if h else float("nan")),
            "runqueue_wait_per_s": r(self.runqueue_wait / self.wall_s if self.wall_s else 0.0),
            "error_kinds": self.error_kinds,
            "delivered_despite_error": self.delivered_despite_error,
        }
        for proc, secs in self.cpu_s.items():
            out[f"{proc}_cpu_us_per_push"] = r(secs * 1e6 / n if n else float("nan"), 1)
        return out


async def pusher(
    http: aiohttp.ClientSession,
    api: str,
    devs: Devices,
    seqs: itertools.count[int],
    count: int,
    phase: Phase,
    wait_s: float,
) -> None:
    """`count` pushes in a row, each to the next device, each waited for at the device."""
    loop = asyncio.get_running_loop()
    for _ in range(count):
        k = next(seqs)
        device_id = devs.ids[k % len(devs.ids)]
        body = orjson.dumps(
            {"command": {"event": "message", "type": "command", "details": {"k": k, "a": "x"}}}
        )
        fut: asyncio.Future[float] = loop.create_future()
        devs.waiting[k] = fut
        t0 = time.perf_counter()
        try:
            async with http.post(f"{api}/api/v1/devices/{device_id}/messages", data=body) as resp:
                answer = await resp.read()
                t1 = time.perf_counter()
            ok = resp.status == 200 and orjson.loads(answer).get("delivered") is True
            if not ok:
                phase.errors += 1
                why = f"{resp.status} {answer[:80].decode(errors='replace')}"
                phase.error_kinds[why] = phase.error_kinds.get(why, 0) + 1
                # Did the device get it anyway? (The API promises `delivered` is the truth.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await fut
                        phase.delivered_despite_error += 1
                continue
            phase.http_ms.append((t1 - t0) * 1000)
            try:
                async with asyncio.timeout(wait_s):
                    arrived = await fut
                phase.delivery_ms.append((arrived - t0) * 1000)
            except TimeoutError:
                phase.lost += 1
        finally:
            devs.waiting.pop(k, None)


async def run_phase(
    http: aiohttp.ClientSession,
    api: str,
    side: str,
    devs: Devices,
    procs: dict[str, Child],
    seqs: itertools.count[int],
    concurrency: int,
    total: int,
    cap_s: float,
) -> Phase:
    """`total` pushes by `concurrency` pushers through `api`, with CPU around them."""
    phase = Phase(side, concurrency)
    per = max(1, total // concurrency)
    # schedstat: CPU in ns, where /proc/<pid>/stat counts 10 ms ticks
    sched0 = {name: process_sched(c.pid) for name, c in procs.items()}
    gen0 = self_cpu_seconds()
    t0 = time.perf_counter()
    pushers = (pusher(http, api, devs, seqs, per, phase, 5.0) for _ in range(concurrency))
    if await run_capped(pushers, cap_s):
        progress(f"  {side} c={concurrency}: duration cap {cap_s:.0f}s reached")
    phase.wall_s = time.perf_counter() - t0
    sched1 = {name: process_sched(c.pid) for name, c in procs.items()}
    phase.cpu_s = {name: sched1[name][0] - sched0[name][0] for name in procs}
    phase.cpu_s["loadgen"] = self_cpu_seconds() - gen0
    phase.runqueue_wait = sum(sched1[name][1] - sched0[name][1] for name in procs)
    for c in procs.values():
        c.check_alive()
    return phase


async def wait_presence(http: aiohttp.ClientSession, api_b: str, device_id: str) -> None:
    """Poll node B until it sees the device on node A (bounded)."""
    for _ in range(200):
        async with http.get(f"{api_b}/api/v1/devices/{device_id}") as resp:
            if resp.status == 200 and (await resp.json()).get("node") == "bench-a":
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"node B never saw {device_id} on node A")


async def redis_error_counts(http: aiohttp.ClientSession, api: str) -> dict[str, float]:
    """relay_redis_errors_total by operation, from a node's /metrics."""
    async with http.get(f"{api}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "relay_redis_errors":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels.get("op", "")] = sample.value
    return out


def start_nodes(started: list[Child], tmp: str) -> tuple[str, str]:
    """redis-server, relay A and relay B; their API base URLs."""
    rport = free_port()
    redis = start_child(
        "push-redis",
        [
            "redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
    )
    started.append(redis)
    wait_tcp(redis, rport)
    urls = []
    for node in ("a", "b"):
        env = relay_env(idle_timeout_s="600") | {
            "RELAY__REDIS__URL": f"redis://127.0.0.1:{rport}/0",
            "RELAY__REDIS__NODE_ID": f"bench-{node}",
        }
        _relay, port = start_relay(started, f"push-relay-{node}", env)
        urls.append(f"http://127.0.0.1:{port}")
    return urls[0], urls[1]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start redis and both nodes, connect the devices to A, sweep, stop everything."""
    sweep: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp, children() as started:
        api_a, api_b = start_nodes(started, tmp)
        procs = {"redis": started[0], "relay_a": started[1], "relay_b": started[2]}
        progress(f"redis pid {started[0].pid}, A {api_a}, B {api_b}")
        async with unlimited_session() as http:
            ws_url = api_a.replace("http://", "ws://") + "/xiaozhi/v1/"
            pairs = await in_batches(
                lambda i: connect(http, ws_url, i), args.devices, CONNECT_BATCH
            )
            devs = Devices([p[0] for p in pairs], [p[1] for p in pairs])
            readers = [asyncio.ensure_future(read_device(devs, ws)) for ws in devs.sockets]
            try:
                await wait_presence(http, api_b, devs.ids[-1])
                progress(f"{args.devices} devices on A, visible from B")
                seqs = itertools.count()
                apis = {"same_node": api_a, "cross_node": api_b}
                for side, api in apis.items():  # warm-up: connections, scripts, pools
                    await run_phase(http, api, side, devs, procs, seqs, 8, 200, args.cap_s)
                for c in args.concurrency:
                    total = max(args.pushes, 10 * c) if c > 1 else args.serial_pushes
                    reps: list[dict[str, Any]] = []
                    for i in range(args.repeat):
                        order = list(apis) if i % 2 == 0 else list(reversed(apis))
                        got = {}
                        for side in order:
                            ph = await run_phase(
                                http, apis[side], side, devs, procs, seqs, c, total, args.cap_s
                            )
                            got[side] = ph.summary()
                            s = got[side]
                            progress(
                                f"c={c} rep {i + 1}/{args.repeat} {side}: "
                                f"{s['pushes_per_s']:.0f}/s, delivery p50 "
                                f"{s['delivery_p50_ms']:.2f} p99 {s['delivery_p99_ms']:.2f} ms, "
                                f"http p99 {s['http_p99_ms']:.2f} ms, errors {s['errors']}, "
                                f"lost {s['lost']}"
                            )
                        reps.append(got)
                    sweep[str(c)] = {
                        "pushes": total,
                        "repetitions": reps,
                        "median": {side: medians([rep[side] for rep in reps]) for side in apis},
                    }
                    m = sweep[str(c)]["median"]
                    sweep[str(c)]["cross_over_same"] = {
                        "delivery_p50": r(
                            m["cross_node"]["delivery_p50_ms"] / m["same_node"]["delivery_p50_ms"],
                            2,
                        ),
                        "delivery_p99": r(
                            m["cross_node"]["delivery_p99_ms"] / m["same_node"]["delivery_p99_ms"],
                            2,
                        ),
                        "throughput": r(
                            m["cross_node"]["pushes_per_s"] / m["same_node"]["pushes_per_s"], 2
                        ),
                    }
                redis_errors = {
                    node: await redis_error_counts(http, api)
                    for node, api in (("a", api_a), ("b", api_b))
                }
            finally:
                for t in readers:
                    t.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                await asyncio.gather(*(ws.close() for ws in devs.sockets), return_exceptions=True)
    return envelope("push", vars(args)) | {
        "stray_envelopes": devs.stray,
        "relay_redis_errors_total": redis_errors,
        "sweep": sweep,
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    lines = [
        f"push: {doc['params']['devices']} devices on A, median of {doc['params']['repeat']}",
        f"  {'c':>4} {'side':<11}{'push/s':>8}{'deliv p50':>10}{'p99':>8}{'http p50':>9}"
        f"{'p99':>8}{'A us':>7}{'B us':>7}{'redis':>7}{'err':>5}{'lost':>5}",
    ]
    for c, point in doc["sweep"].items():
        for side in ("same_node", "cross_node"):
            s = point["median"][side]
            lines.append(
                f"  {c:>4} {side:<11}{s['pushes_per_s']:>8.0f}{s['delivery_p50_ms']:>10.2f}"
                f"{s['delivery_p99_ms']:>8.2f}{s['http_p50_ms']:>9.2f}{s['http_p99_ms']:>8.2f}"
                f"{s['relay_a_cpu_us_per_push']:>7.0f}{s['relay_b_cpu_us_per_push']:>7.0f}"
                f"{s['redis_cpu_us_per_push']:>7.0f}{s['errors']:>5.0f}{s['lost']:>5.0f}"
            )
        x = point["cross_over_same"]
        lines.append(
            f"       cross/same: delivery p50 {x['delivery_p50']:.2f}x, p99 "
            f"{x['delivery_p99']:.2f}x, throughput {x['throughput']:.2f}x"
        )
    lines.append(f"relay_redis_errors_total at the end: {doc['relay_redis_errors_total']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("push", __doc__)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8, 32, 128],
        help="comma-separated concurrent pushers to sweep",
    )
    p.add_argument("--pushes", type=int, default=1000, help="pushes per phase (c > 1)")
    p.add_argument("--serial-pushes", type=int, default=300, help="pushes per phase at c = 1")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cap-s", type=float, default=60.0, help="cap per phase")
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.pushes, args.serial_pushes, args.repeat, *args.concurrency)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
