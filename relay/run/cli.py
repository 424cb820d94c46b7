"""Command line: `python -m relay serve --config PATH`."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

from relay.config.load import WORKER_ENV, load
from relay.config.schema import ConfigError
from relay.logs import configure as configure_logging
from relay.run.workers import listening_socket, run_workers

log = logging.getLogger("relay")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", help="TOML file (default: built-in defaults)")
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default 1)"
    )
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


def _strip(argv: Sequence[str], options: tuple[str, ...]) -> list[str]:
    """`argv` without the given options and their values (both `--opt v` and `--opt=v`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            out.append(arg)
    return out


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
    configure_logging(config.log)  # one record, one line (relay/logs.py)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.business:
        log.warning("no [[business]] configured: devices will get business_not_configured")
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        return run_workers(_strip(passthrough, ("--workers", "--port")), args.workers, host, port)
    from relay.run.server import serve  # the app and its models: only in serving processes

    sock = listening_socket(host, port, reuse_port=WORKER_ENV in os.environ)
    tune_gc(config.server.gc_freeze, config.server.gc_gen0_threshold)
    uvloop.run(serve(config, sock))
    return 0
