"""Command line: `python -m relay serve --config PATH`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from relay.app import make_app
from relay.config import ConfigError, load

log = logging.getLogger("relay")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", help="TOML file (default: built-in defaults)")
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", required=True)
    return parser


def tune_gc(freeze: bool, gen0_threshold: int) -> None:
    """Keep the cyclic collector off the hot path: with the default threshold it ran about
    every thousand allocations and walked every object imported at startup, half the
    relay's CPU under load (docs/performance.md)."""
    if freeze:
        gc.collect()
        gc.freeze()
    if gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("config ok")
        return 0
    logging.basicConfig(
        level=config.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.business:
        log.warning("no [[business]] configured: devices will get business_not_configured")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = make_app(config)
    tune_gc(config.server.gc_freeze, config.server.gc_gen0_threshold)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        shutdown_timeout=config.server.drain_timeout_s,
        print=lambda _msg: log.info("relay listening on http://%s:%d", host, port),
    )
    return 0
