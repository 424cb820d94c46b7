"""Device simulator: connects to the relay exactly like xiaozhi firmware (docs/protocol.md §1),
runs one turn, prints what arrives and how fast; `--devices N` makes it a load generator
(devsim/load.py). The device itself is devsim/conn.py, a turn's workload and measurements
devsim/work.py; this module is its command line. Usage: docs/devsim.md. Importable:
`await run(parse_args([...]))`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import aiohttp
import orjson
import uvloop

from devsim import load, work
from devsim.conn import Conn, HandshakeFailed, connect
from devsim.options import Options

DEFAULT_URL = "ws://127.0.0.1:8000/xiaozhi/v1/"
CUSTOM_GRACE_S = 0.5  # a spoken reply to a custom payload starts after its message_end
MAX_DEVICES, MAX_TURNS = 5000, 1000


def build_parser() -> argparse.ArgumentParser:
    """The command line; docs/devsim.md describes every option."""
    about = "Simulate a xiaozhi-compatible device against the relay (docs/devsim.md)."
    p = argparse.ArgumentParser(prog="python -m devsim.cli", description=about)
    add = p.add_argument
    add("--url", default=DEFAULT_URL, help=f"relay WebSocket URL (default {DEFAULT_URL})")
    add("--device-id", default="", metavar="ID", help="Device-Id (default: a random MAC-like id)")
    add("--protocol", type=int, choices=(1, 2, 3), default=1, help="binary framing version")
    add("--token", default="", help="sent as Authorization: Bearer <token>")
    add("--agent", default="", help="X-Agent-ID: which business service answers")
    add("--query-auth", action="store_true", help="identity as query parameters (browsers)")
    add("--pcm", action="store_true", help="declare and send raw 16 kHz PCM instead of Opus")
    add("--mcp", action="store_true", help="declare MCP and serve the firmware's common tools")
    add("--stay", type=_seconds, default=0.0, metavar="S", help="stay connected S s after the turn")
    turn = p.add_mutually_exclusive_group().add_argument
    turn("--say", metavar="TEXT", help="speak TEXT (synthesised offline by espeak-ng)")
    turn("--wav", metavar="FILE", help="speak a mono 16-bit WAV file (any sample rate)")
    turn("--custom", metavar="JSON|@FILE", help="send a custom payload ($SESSION_ID replaced)")
    turn("--text-response", metavar="TEXT", help="listen detect asking the relay to say TEXT")
    turn("--text", metavar="TEXT", help="typed text (listen detect): a chat turn without audio")
    add("--mode", choices=("manual", "auto", "realtime"), default="manual", help="listen mode")
    add("--abort-after", type=_positive, metavar="S", help="send abort S s after tts start")
    add("--out", metavar="FILE", help="write the answer audio to a WAV file")
    add("--json", action="store_true", help="the result as one JSON document on stdout")
    add("--verbose", action="store_true", help="one line per audio frame")
    add("--timeout", type=_positive, default=30.0, metavar="S", help="bound (default 30 s)")
    add("--speed", type=_positive, default=1.0, metavar="X", help="uplink pace × real time")
    devices, turns = _count(MAX_DEVICES), _count(MAX_TURNS)
    add("--devices", type=devices, default=1, metavar="N", help="load: simulated devices")
    add("--turns", type=turns, default=1, metavar="K", help="load: turns per device")
    add("--ramp-batch", type=devices, default=50, metavar="N", help="load: devices per batch")
    add("--ramp-interval", type=_positive, default=0.5, metavar="S", help="load: between batches")
    add("--max-duration", type=_positive, default=600.0, metavar="S", help="load: whole run")
    return p


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line; exits with a usage message when they are invalid."""
    return Options(**vars(build_parser().parse_args(argv)))


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text}")
    return value


def _count(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not 1 <= (value := int(text)) <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit}, got {text}")
        return value

    return parse


async def run(opts: Options, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the simulator; returns the exit code (0 ok, 1 connection, 2 timeout, 3, 4)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        plan = await work.prepare(opts)
    except work.InputError as exc:
        print(f"devsim: {exc}", file=err)
        return work.EXIT_INPUT
    if opts.devices > 1 or opts.turns > 1:
        if plan.kind == "none":
            print("devsim: load needs --say, --wav, --custom, --text or --text-response", file=err)
            return work.EXIT_INPUT
        return await load.run_load(opts, plan, out, err)
    printer = work.Printer(
        err if opts.json else out, asyncio.get_running_loop().time(), opts.verbose
    )
    device_id = opts.device_id or load.random_mac()
    conn: Conn | None = None
    trace: work.Trace | None = None
    async with aiohttp.ClientSession() as session:
        try:
            async with asyncio.timeout(opts.timeout + opts.stay):
                conn = await connect(session, opts, device_id, printer, keep_audio=bool(opts.out))
                try:
                    if plan.kind != "none":
                        async with asyncio.timeout(opts.timeout):
                            trace = await conn.turn(plan, opts, grace=CUSTOM_GRACE_S)
                    await asyncio.sleep(opts.stay)  # e.g. for its tools to be called (--mcp)
                finally:
                    await conn.close()
        except TimeoutError:
            t = conn.trace if conn is not None else None
            last = ([s for s in work.STAGES if t and s in t.marks] or ["none"])[-1]
            limit = f"the turn did not end within {opts.timeout:g} s"
            print(f"devsim: timeout: {limit} (last stage reached: {last})", file=err)
            return work.EXIT_TIMEOUT
        except HandshakeFailed as exc:
            print(f"devsim: {exc}", file=err)
            if exc.body:
                print(f"devsim: relay said: {exc.body}", file=err)
            return work.EXIT_CONNECT
        except (aiohttp.ClientError, OSError) as exc:
            print(f"devsim: connection lost: {exc or type(exc).__name__}", file=err)
            return work.EXIT_CONNECT
    doc: dict[str, Any] = {"device_id": device_id, "session_id": conn.session_id}
    doc["hello"] = conn.hello
    if trace is not None:
        doc |= work.turn_report(trace, conn.printer.frame_s)
        if opts.out and conn.pcm is not None:
            pcm, rate, channels = bytes(conn.pcm), conn.down_rate, conn.down_channels
            await asyncio.to_thread(write_wav, opts.out, pcm, rate, channels)
            doc["out"] = opts.out
    if opts.json:
        lines = [orjson.dumps(doc).decode()]
    else:
        lines = work.turn_lines(doc) if trace else [f"connected: session {conn.session_id}"]
    print("\n".join(lines), file=out, flush=True)
    return work.EXIT_CONNECT if trace is not None and "closed" in trace.errors else work.EXIT_OK


def write_wav(path: str, pcm: bytes, rate: int, channels: int = 1) -> None:
    """Write 16-bit PCM as a WAV file."""
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devsim.cli`: returns the exit code."""
    opts = parse_args(argv)
    try:
        return uvloop.run(run(opts))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    from devsim.cli import main as _main  # one module object, not a second __main__ copy

    sys.exit(_main())
