"""Device tool calls through the API (docs/protocol.md §3.2): same node and cross node, and
the memory a device's kept tool list costs.

A private redis-server and relays A and B sharing it (as bench/push.py). D MCP devices
connect to A; each serves the firmware's tools (devsim/mcp.py) plus `self.bench.echo`, 50
tools in all. One caller POSTs `/api/v1/devices/{id}/tools/self.bench.echo` to A (same node)
or to B (cross node: B asks A through its inbox, A asks the device, A replies to B), one
call at a time. Per call: the HTTP round trip, the device's own time (its `tools/call`
received → its answer written, stamped by the device), and their difference, the time the
relay (and the loopback hops) add.

Memory: before the calls, A's RSS is read with no device, after D devices whose tool list
is empty, and after D more whose list holds the 50 tools; the second step's growth per
device minus the first's is what holding a 50-tool list costs, compared with the list's
JSON size.

    python -m bench.tools [--devices 200] [--calls 500] [--repeat 3]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import children, envelope, medians, percentile, progress, r, rss_kib
from bench._devices import mac, say_hello, unlimited_session
from bench.push import start_nodes
from devsim.mcp import DeviceState, Prop, Tool, ToolServer, firmware_tools

CONNECT_BATCH = 10
HELLO = orjson.dumps(
    {"type": "hello", "version": 1, "transport": "websocket"} | {"features": {"mcp": True}}
)
GOALS_MS = {"same_node": 2.0, "cross_node": 5.0}  # relay-added p50 (the goals)
GOAL_LIST_KIB = 4.0  # memory beyond the list's JSON size, per device


@dataclass
class BenchDevice:
    """One MCP device: its tool server, and when it took and answered each echo call."""

    device_id: str
    ws: aiohttp.ClientWebSocketResponse
    server: ToolServer
    stamps: dict[int, float] = field(default_factory=dict)  # k -> the device's own seconds


def tools(with_list: bool) -> list[Tool]:
    """The firmware's 4 common tools, 45 board tools and the echo tool; none when not
    `with_list`."""
    if not with_list:
        return []
    echo = Tool("self.bench.echo", "Answers at once.", {"k": Prop("integer", 0, 2**31)}, str)
    return [*firmware_tools(DeviceState(), board_tools=45), echo]


async def serve(dev: BenchDevice) -> None:
    """Answer the relay's MCP requests like the firmware; stamp each echo call."""
    session_id = b""
    async for msg in dev.ws:
        if msg.type != WSMsgType.TEXT:
            continue
        t0 = time.perf_counter()
        obj = orjson.loads(msg.data)
        if obj.get("type") != "mcp":
            continue
        session_id = session_id or orjson.dumps(obj.get("session_id", ""))
        payload = obj.get("payload")
        reply = dev.server.handle(payload)
        if reply is None:
            continue
        await dev.ws.send_str(
            (b'{"session_id":%b,"type":"mcp","payload":%b}' % (session_id, reply)).decode()
        )
        params = payload.get("params") if isinstance(payload, dict) else None
        args = params.get("arguments") if isinstance(params, dict) else None
        if isinstance(args, dict) and isinstance(k := args.get("k"), int):
            dev.stamps[k] = time.perf_counter() - t0


async def connect(http: aiohttp.ClientSession, url: str, idx: int, with_list: bool) -> BenchDevice:
    device = mac(0x02, 0x7A, 0, int(with_list), (idx >> 8) & 255, idx & 255)
    headers = {"Device-Id": device, "Client-Id": f"tools-{idx}", "Protocol-Version": "1"}
    ws, _reply = await say_hello(http, url, headers, HELLO)
    return BenchDevice(device.replace(":", ""), ws, ToolServer(tools(with_list)))


async def wait_tools(http: aiohttp.ClientSession, api: str, device_id: str, count: int) -> int:
    """Poll until `api` lists `count` tools of the device; the list's JSON size."""
    for _ in range(400):
        async with http.get(f"{api}/api/v1/devices/{device_id}/tools") as resp:
            if resp.status == 200:
                listed = (await resp.json())["tools"]
                if len(listed) == count:
                    return len(orjson.dumps(listed))
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{api} never listed {count} tools of {device_id}")


@dataclass
class Phase:
    side: str
    http_ms: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        h, d, a = sorted(self.http_ms), sorted(self.device_ms), sorted(self.added_ms)
        return {
            "side": self.side,
            "calls": len(h),
            "errors": self.errors,
            "http_p50_ms": r(percentile(h, 50)),
            "http_p99_ms": r(percentile(h, 99)),
            "device_p50_ms": r(percentile(d, 50), 4),
            "added_p50_ms": r(percentile(a, 50)),
            "added_p99_ms": r(percentile(a, 99)),
        }


async def calls(
    http: aiohttp.ClientSession, api: str, side: str, devs: list[BenchDevice], n: int, k0: int
) -> Phase:
    """`n` echo calls through `api`, one at a time, over the devices in turn."""
    phase = Phase(side)
    for i in range(n):
        k, dev = k0 + i, devs[i % len(devs)]
        body = orjson.dumps({"arguments": {"k": k}})
        url = f"{api}/api/v1/devices/{dev.device_id}/tools/self.bench.echo"
        t0 = time.perf_counter()
        async with http.post(url, data=body) as resp:
            answer = await resp.read()
        rtt = time.perf_counter() - t0
        own = dev.stamps.pop(k, None)
        if resp.status != 200 or orjson.loads(answer).get("is_error") is not False or own is None:
            phase.errors += 1
            continue
        phase.http_ms.append(rtt * 1000)
        phase.device_ms.append(own * 1000)
        phase.added_ms.append((rtt - own) * 1000)
    return phase


async def settled_rss(pid: int) -> int:
    """A's RSS once the set-ups are done and the loop is quiet."""
    gc.collect()
    await asyncio.sleep(1.0)
    return rss_kib(pid)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start redis and both nodes, measure memory while connecting, then the calls."""
    devs: list[BenchDevice] = []
    tasks: list[asyncio.Task[None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp, children() as started:
        api_a, api_b = start_nodes(started, tmp)
        relay_a = started[1]
        async with unlimited_session() as http:
            ws_url = api_a.replace("http://", "ws://") + "/xiaozhi/v1/"
            try:
                memory: dict[str, Any] = {"base_kib": await settled_rss(relay_a.pid)}
                for with_list in (False, True):
                    # A few at a time, each batch listed before the next: the set-ups'
                    # transient garbage is reused, not piled up (RSS keeps its peak).
                    for start in range(0, args.devices, CONNECT_BATCH):
                        idx = range(start, min(args.devices, start + CONNECT_BATCH))
                        made = await asyncio.gather(
                            *(connect(http, ws_url, i, with_list=with_list) for i in idx)
                        )
                        tasks += [asyncio.ensure_future(serve(d)) for d in made]
                        devs += made
                        count = 50 if with_list else 0
                        size = await wait_tools(http, api_a, made[-1].device_id, count)
                    memory["with_list_kib" if with_list else "empty_list_kib"] = await settled_rss(
                        relay_a.pid
                    )
                    progress(f"{len(devs)} devices on A, list JSON {size} bytes")
                empty = (memory["empty_list_kib"] - memory["base_kib"]) / args.devices
                full = (memory["with_list_kib"] - memory["empty_list_kib"]) / args.devices
                memory |= {
                    "list_json_bytes": size,
                    "per_device_empty_list_kib": r(empty, 2),
                    "per_device_50_tools_kib": r(full, 2),
                    "list_cost_kib": r(full - empty, 2),
                    "beyond_json_kib": r(full - empty - size / 1024, 2),
                }
                listed = [d for d in devs if d.server.tools]
                await wait_tools(http, api_b, listed[-1].device_id, 50)
                reps: list[dict[str, Any]] = []
                k = 0
                await calls(http, api_a, "same_node", listed, 50, 10**6)  # warm-up
                await calls(http, api_b, "cross_node", listed, 50, 2 * 10**6)
                for i in range(args.repeat):
                    got = {}
                    for side, api in (("same_node", api_a), ("cross_node", api_b))[
                        :: 1 - 2 * (i % 2)
                    ]:
                        got[side] = (await calls(http, api, side, listed, args.calls, k)).summary()
                        k += args.calls
                        s = got[side]
                        progress(
                            f"rep {i + 1}/{args.repeat} {side}: http p50 {s['http_p50_ms']:.2f} "
                            f"p99 {s['http_p99_ms']:.2f} ms, relay-added p50 "
                            f"{s['added_p50_ms']:.2f} p99 {s['added_p99_ms']:.2f} ms"
                        )
                    reps.append(got)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(d.ws.close() for d in devs), return_exceptions=True)
    median = {side: medians([rep[side] for rep in reps]) for side in GOALS_MS}
    goals = [
        {
            "goal": f"{side} relay-added p50 <= {ms} ms",
            "value": median[side]["added_p50_ms"],
            "pass": median[side]["added_p50_ms"] <= ms,
        }
        for side, ms in GOALS_MS.items()
    ]
    goals.append(
        {
            "goal": f"a 50-tool list costs <= {GOAL_LIST_KIB} KiB beyond its JSON per device",
            "value": memory["beyond_json_kib"],
            "pass": memory["beyond_json_kib"] <= GOAL_LIST_KIB,
        }
    )
    return envelope("tools", vars(args)) | {
        "memory": memory,
        "repetitions": reps,
        "median": median,
        "goals": goals,
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    m = doc["memory"]
    lines = [
        f"tools: {doc['params']['devices']} devices per step on A, median of "
        f"{doc['params']['repeat']}",
        f"  {'side':<11}{'http p50':>9}{'p99':>8}{'device':>8}{'added p50':>10}{'p99':>8}"
        f"{'err':>5}",
    ]
    for side, s in doc["median"].items():
        lines.append(
            f"  {side:<11}{s['http_p50_ms']:>9.2f}{s['http_p99_ms']:>8.2f}"
            f"{s['device_p50_ms']:>8.3f}{s['added_p50_ms']:>10.2f}{s['added_p99_ms']:>8.2f}"
            f"{s['errors']:>5.0f}"
        )
    lines.append(
        f"memory per device: empty list {m['per_device_empty_list_kib']} KiB, 50 tools "
        f"{m['per_device_50_tools_kib']} KiB; the list {m['list_cost_kib']} KiB for "
        f"{m['list_json_bytes']} bytes of JSON: {m['beyond_json_kib']} KiB beyond it"
    )
    return "\n".join(lines + goal_lines(doc["goals"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("tools", __doc__)
    p.add_argument("--devices", type=int, default=200, help="devices per memory step")
    p.add_argument("--calls", type=int, default=500, help="calls per side and repetition")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    at_least_one(p, args.devices, args.calls, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
