"""Micro-benchmark: the relay's per-message WebSocket reader pattern vs. a plain receive.

relay/device/connection.py `Connection.run` reads each device message by creating a task for
`ws.receive()` and racing it with a "link closed" task in `asyncio.wait(..., timeout=idle)`.
This compares, in one server process (bare aiohttp + uvloop, echoing a small JSON per
message), the server CPU per message of:
  relay_wait       that pattern, as in relay/device/connection.py;
  receive_timeout  `await ws.receive(timeout=idle)` (the baseline: what aiohttp offers).

    python -m bench.reader_loop [--connections 200] [--messages 200] [--repeat 3]

stdout: one JSON document; stderr: progress and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import WSMsgType, web

from bench._cli import at_least_one, parser, run_main
from bench._common import (
    PYTHON,
    children,
    cpu_seconds,
    envelope,
    median,
    medians,
    percentile,
    progress,
    r,
)
from bench._devices import unlimited_session
from bench._peers import start_server

IDLE_S = 180.0  # the relay's default idle timeout (docs/protocol.md §1.7)
REPLY = b'{"session_id":"AAAAAAAAAAAAAAAAAAAAAA","type":"custom","payload":{}}'
PATTERNS = ("relay_wait", "receive_timeout")


async def relay_wait(ws: web.WebSocketResponse) -> None:
    """The pattern of relay/device/connection.py Connection.run."""
    closed = asyncio.Event()  # stands for Link._closed
    closed_wait = asyncio.ensure_future(closed.wait())
    try:
        while not closed.is_set():
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait(
                (receive, closed_wait), timeout=IDLE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if receive not in done:
                receive.cancel()
                break
            if receive.result().type != WSMsgType.TEXT:
                break
            await ws.send_frame(REPLY, WSMsgType.TEXT)
    finally:
        closed_wait.cancel()


async def receive_timeout(ws: web.WebSocketResponse) -> None:
    """The baseline: one awaited receive with aiohttp's own timeout."""
    while True:
        try:
            msg = await ws.receive(timeout=IDLE_S)
        except TimeoutError:
            break
        if msg.type != WSMsgType.TEXT:
            break
        await ws.send_frame(REPLY, WSMsgType.TEXT)


async def handler(request: web.Request) -> web.StreamResponse:
    """`/relay_wait` or `/receive_timeout`."""
    ws = web.WebSocketResponse(compress=False, decode_text=False)
    await ws.prepare(request)
    if request.match_info["pattern"] == "relay_wait":
        await relay_wait(ws)
    else:
        await receive_timeout(ws)
    return ws


async def healthz(_request: web.Request) -> web.Response:
    """Readiness for the benchmark's wait loop."""
    return web.Response(text="ok")


def serve(port: int) -> None:
    """The server side, run in its own process."""
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{pattern}", handler)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def one_connection(
    http: aiohttp.ClientSession, url: str, messages: int, lat: list[float]
) -> None:
    """Send `messages` text frames one at a time, each waiting for its echo."""
    async with http.ws_connect(url) as ws:
        for k in range(messages):
            t0 = time.perf_counter_ns()
            await ws.send_frame(orjson.dumps({"type": "custom", "k": k}), WSMsgType.TEXT)
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                raise RuntimeError(f"connection ended: {msg.type!r}")
            lat.append((time.perf_counter_ns() - t0) / 1e6)


async def phase(
    http: aiohttp.ClientSession, base: str, pid: int, pattern: str, args: argparse.Namespace
) -> dict[str, Any]:
    """All connections at once on one pattern; server CPU per message and latency."""
    url = f"{base}/{pattern}"
    await asyncio.gather(*(one_connection(http, url, 5, []) for _ in range(args.connections)))
    lat: list[float] = []
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    async with asyncio.timeout(args.duration_cap_s):
        await asyncio.gather(
            *(one_connection(http, url, args.messages, lat) for _ in range(args.connections))
        )
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    lat.sort()
    return {
        "pattern": pattern,
        "messages": len(lat),
        "server_cpu_us_per_msg": r(cpu * 1e6 / len(lat), 1),
        "throughput_per_s": r(len(lat) / wall, 1),
        "p50_ms": r(percentile(lat, 50)),
        "p99_ms": r(percentile(lat, 99)),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, alternate the patterns for `repeat` rounds."""
    reps: list[dict[str, Any]] = []
    with children() as started:
        argv = [PYTHON, "-m", "bench.reader_loop"]
        server, port = start_server(started, "reader-loop-server", argv, port_flag="--serve")
        async with unlimited_session() as http:
            for i in range(args.repeat):
                order = PATTERNS if i % 2 == 0 else PATTERNS[::-1]
                got: dict[str, Any] = {}
                for pattern in order:
                    got[pattern] = await phase(
                        http, f"ws://127.0.0.1:{port}", server.pid, pattern, args
                    )
                    progress(f"rep {i + 1}/{args.repeat} {pattern}: {got[pattern]}")
                base = got["receive_timeout"]["server_cpu_us_per_msg"]
                got["cpu_ratio"] = r(got["relay_wait"]["server_cpu_us_per_msg"] / base, 2)
                reps.append(got)
    keys = ("server_cpu_us_per_msg", "throughput_per_s", "p50_ms", "p99_ms")
    med: dict[str, Any] = {p: medians([rep[p] for rep in reps], keys) for p in PATTERNS}
    med["cpu_ratio"] = r(median([rep["cpu_ratio"] for rep in reps]), 2)
    return envelope("reader_loop", vars(args)) | {"repetitions": reps, "median": med}


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary of the medians."""
    med = doc["median"]
    lines = [f"  {'pattern':<17}{'server us/msg':>14}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
    for p in PATTERNS:
        s = med[p]
        lines.append(
            f"  {p:<17}{s['server_cpu_us_per_msg']:>14.1f}{s['throughput_per_s']:>9.0f}"
            f"{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}"
        )
    lines.append(f"  relay_wait / receive_timeout server CPU: {med['cpu_ratio']:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("reader_loop", __doc__)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--messages", type=int, default=200, help="per connection")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration-cap-s", type=float, default=120.0)
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    at_least_one(p, args.connections, args.messages, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --serve, the server side)."""
    args = parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    return run_main(run, table, args)


if __name__ == "__main__":
    sys.exit(main())
