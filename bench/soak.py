"""Soak: many short device lives through one relay, and whether its resources stay flat.

Each cycle is a device's whole life: connect, hello, a text turn (`listen detect` with text,
answered by the reference business and spoken), a `custom` pass-through round trip to the
same business, disconnect. Most turns are cut by an `abort` once the first audio frame
arrives (a barge-in, which keeps a cycle short); every `--full-turn-every`-th one plays to
its `tts stop`. `--concurrency` devices live at once; the relay and the reference business
run as subprocesses. The relay's RSS, open descriptors and asyncio tasks
(`relay_event_loop_tasks` on /metrics) are sampled cold, after the warm-up (and a settle),
every `--sample-s` seconds, and at the end after a settle.

Goals: RSS grows at most 5 % from the warm-up sample to the end; descriptors (not counting
the business pool's idle keep-alive sockets) and tasks are back to their warm-up values (the
warm-up fills the caches and the pool, which the cold sample has not).

    python -m bench.soak [--cycles 50000] [--concurrency 50] [--warmup 2000]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import Child, children, envelope, progress, r, rss_kib, tcp_states
from bench._devices import mac, say_hello, unlimited_session, voice_hello
from bench._peers import device_url, relay_env, start_business, start_relay

GOAL_RSS_GROWTH_PCT = 5.0
HELLO = voice_hello()
STEP_TIMEOUT_S = 30.0  # one turn or round trip; a cycle that takes longer is an error


class Soak:
    """The run's shared state: cycles handed out, outcomes, samples."""

    def __init__(self, args: argparse.Namespace, relay: Child, port: int, business: int) -> None:
        self.args = args
        self.relay = relay
        self.business_port = business
        self.url = device_url(port)
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.next_cycle = 0
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    async def sample(self, http: aiohttp.ClientSession, label: str) -> dict[str, Any]:
        """RSS, descriptors and tasks of the relay now."""
        self.relay.check_alive()
        async with http.get(self.metrics_url) as resp:
            text = await resp.text()
        tasks = next(
            int(float(line.split()[1]))
            for line in text.splitlines()
            if line.startswith("relay_event_loop_tasks ")
        )
        point = {
            "label": label,
            "t_s": r(time.monotonic() - self.t0, 1),
            "cycles": self.done,
            "rss_kib": rss_kib(self.relay.pid),
            "fds": len(os.listdir(f"/proc/{self.relay.pid}/fd")),
            # idle keep-alive sockets of the business pool (both ends are on this machine)
            "business_sockets": tcp_states(self.business_port)["established"] // 2,
            "tasks": tasks,
        }
        self.samples.append(point)
        return point


async def send(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
    """One JSON text message (§1.3)."""
    await ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)


async def until(ws: aiohttp.ClientWebSocketResponse, want: str, state: str = "") -> None:
    """Read until a text message of type `want` (and `state`, when given)."""
    while True:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            continue
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError(f"closed while waiting for {want} {state}".strip())
        m = orjson.loads(msg.data)
        if m.get("type") == want and (not state or m.get("state") == state):
            return


async def first_audio(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read until the first binary (audio) frame of the answer."""
    while True:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            return
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError("closed while waiting for audio")


async def passthrough(ws: aiohttp.ClientWebSocketResponse, did: str, sid: str, k: int) -> None:
    """One `custom` round trip: send a report, read until its `message_end` envelope."""
    details = {"session_id": sid, "k": k}
    payload = {"auth": {"device_id": did}, "type": "report", "details": details}
    await send(ws, {"session_id": sid, "type": "custom", "payload": payload})
    while True:
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError("closed while waiting for message_end")
        m = orjson.loads(msg.data)
        event = m.get("payload", {}).get("business_response", {}).get("event")
        if event == "message_end":
            return
        if event == "error":
            raise RuntimeError("business error")


async def cycle(soak: Soak, http: aiohttp.ClientSession, k: int) -> None:
    """One device's life; a failure is counted by the step it happened in."""
    did = mac(0x02, 0x5A, (k >> 24) & 255, (k >> 16) & 255, (k >> 8) & 255, k & 255)
    headers = {"Device-Id": did, "Client-Id": f"soak-{k}", "Protocol-Version": "1"}
    step = "hello"
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            ws, reply = await say_hello(http, soak.url, headers, HELLO)
            sid = reply["session_id"]
            step = "turn"
            detect = {"session_id": sid, "type": "listen", "state": "detect", "text": "hello"}
            await send(ws, detect)
            await until(ws, "tts", "start")
            if k % soak.args.full_turn_every:
                await first_audio(ws)
                await send(ws, {"session_id": sid, "type": "abort"})
            await until(ws, "tts", "stop")
            step = "passthrough"
            await passthrough(ws, did.replace(":", ""), sid, k)
            step = "close"
            await ws.close()
    except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError, KeyError):
        soak.errors[step] += 1
    finally:
        if ws is not None and not ws.closed:
            await ws.close()
        soak.done += 1


async def run_cycles(soak: Soak, http: aiohttp.ClientSession, total: int) -> float:
    """`total` more cycles, `--concurrency` at a time; their wall time."""
    end = soak.next_cycle + total
    start = time.monotonic()

    async def worker() -> None:
        while soak.next_cycle < end:
            k = soak.next_cycle
            soak.next_cycle += 1
            await cycle(soak, http, k)

    await asyncio.gather(*(worker() for _ in range(soak.args.concurrency)))
    return time.monotonic() - start


async def sampler(soak: Soak, http: aiohttp.ClientSession) -> None:
    """A sample every `--sample-s` seconds, with a progress line."""
    while True:
        await asyncio.sleep(soak.args.sample_s)
        p = await soak.sample(http, "during")
        progress(
            f"  {p['cycles']} cycles, RSS {p['rss_kib'] / 1024:.1f} MiB, {p['fds']} fds, "
            f"{p['tasks']} tasks, errors {dict(soak.errors)}"
        )


def back_to(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A series that is flat when its end value is back to (or below) its warm-up value."""
    by = {s["label"]: s[key] for s in samples}
    flat = by["end"] <= by["warm"]
    if key == "fds":  # the business pool's idle sockets may differ: they are not a leak
        pool = {s["label"]: s["business_sockets"] for s in samples}
        flat = by["end"] - pool["end"] <= by["warm"] - pool["warm"]
    return {"series": [s[key] for s in samples], **by, "flat": flat}


def flatness(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Each series and whether it is flat: RSS growth from warm-up to end, descriptors and
    tasks back to their warm-up values."""
    by = {s["label"]: s for s in samples}
    warm, end = by["warm"], by["end"]
    growth = 100.0 * (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"]
    return {
        "rss_kib": {
            "series": [s["rss_kib"] for s in samples],
            "growth_after_warmup_pct": r(growth, 2),
            "flat": growth <= GOAL_RSS_GROWTH_PCT,
        },
        "fds": back_to(samples, "fds") | {"business_sockets": back_to(samples, "business_sockets")},
        "tasks": back_to(samples, "tasks"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the business and the relay, warm up, soak, settle; the JSON document."""
    with children() as started:
        _business, business_port = start_business(started, "soak-business")
        relay, port = start_relay(started, "soak-relay", relay_env(business_port))
        soak = Soak(args, relay, port, business_port)
        async with unlimited_session() as http:
            await asyncio.sleep(args.settle_s)
            await soak.sample(http, "cold")
            progress(f"warm-up: {args.warmup} cycles")
            await run_cycles(soak, http, args.warmup)
            await asyncio.sleep(args.settle_s)
            warm = await soak.sample(http, "warm")
            progress(f"warm: {warm}")
            main = args.cycles - args.warmup
            progress(f"soak: {main} cycles, {args.concurrency} at a time")
            ticker = asyncio.create_task(sampler(soak, http))
            try:
                wall_s = await run_cycles(soak, http, main)
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            await asyncio.sleep(args.settle_s)
            end = await soak.sample(http, "end")
            progress(f"end: {end}")
    flat = flatness(soak.samples)
    goals = [
        {
            "goal": f"RSS growth after warm-up <= {GOAL_RSS_GROWTH_PCT} %",
            "value": flat["rss_kib"]["growth_after_warmup_pct"],
            "pass": flat["rss_kib"]["flat"],
        },
        {
            "goal": "descriptors back to their warm-up value (idle business sockets aside)",
            "value": f"{flat['fds']['warm']} -> {flat['fds']['end']} (business sockets "
            f"{flat['fds']['business_sockets']['warm']} -> "
            f"{flat['fds']['business_sockets']['end']})",
            "pass": flat["fds"]["flat"],
        },
        {
            "goal": "asyncio tasks back to their warm-up value",
            "value": f"{flat['tasks']['warm']} -> {flat['tasks']['end']}",
            "pass": flat["tasks"]["flat"],
        },
        {"goal": "no failed cycle", "value": sum(soak.errors.values()), "pass": not soak.errors},
    ]
    return envelope("soak", vars(args)) | {
        "cycles_done": soak.done,
        "cycles_per_s": r(main / wall_s, 1),
        "errors": dict(soak.errors),
        "samples": soak.samples,
        "flatness": flat,
        "goals": goals,
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary."""
    f = doc["flatness"]
    rss = f["rss_kib"]["series"]
    lines = [
        f"soak: {doc['cycles_done']} cycles at {doc['params']['concurrency']} at a time, "
        f"{doc['cycles_per_s']} cycles/s, errors {doc['errors']}",
        f"  RSS MiB cold {rss[0] / 1024:.1f}, warm {rss[1] / 1024:.1f}, "
        f"max {max(rss) / 1024:.1f}, end {rss[-1] / 1024:.1f}",
        f"  fds cold/warm/end {f['fds']['cold']}/{f['fds']['warm']}/{f['fds']['end']}, "
        f"tasks cold/warm/end {f['tasks']['cold']}/{f['tasks']['warm']}/{f['tasks']['end']}",
    ]
    return "\n".join(lines + goal_lines(doc["goals"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("soak", __doc__)
    p.add_argument("--cycles", type=int, default=50_000, help="device lives, warm-up included")
    p.add_argument("--concurrency", type=int, default=50, help="devices alive at once")
    p.add_argument("--warmup", type=int, default=2000, help="cycles before the reference sample")
    p.add_argument("--full-turn-every", type=int, default=10, help="the others are aborted")
    p.add_argument("--sample-s", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--settle-s", type=float, default=5.0, help="pause before a reference sample")
    args = p.parse_args(argv)
    at_least_one(p, args.cycles, args.concurrency, args.warmup, args.full_turn_every)
    if args.warmup >= args.cycles:
        p.error("--warmup must be smaller than --cycles")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
