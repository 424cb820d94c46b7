"""Command line: `relay serve --config PATH` (or `python -m relay …`)."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence

import uvloop

from metrics.registry import build_version, python_version
from relay.config.load import WORKER_ENV, load
from relay.config.schema import Config, ConfigError
from relay.logs import configure as configure_logging
from relay.run.workers import listening_socket, run_workers

log = logging.getLogger("relay")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"relay {build_version()} (Python {python_version()})",
    )
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


def listen_error(
    host: str, port: int, exc: OSError, setting: str = "--port or [server] port"
) -> str:
    """One line saying why the relay cannot listen, and what to do; `setting` names where
    the port was chosen."""
    what = exc.strerror or str(exc)
    hint = {
        errno.EADDRINUSE: f"another process listens there: stop it, or choose another port "
        f"with {setting}",
        errno.EACCES: "ports below 1024 need privileges: choose a port of 1024 or more",
        errno.EADDRNOTAVAIL: "no interface of this machine has that address: check [server] host",
    }.get(exc.errno or 0, "check [server] host and port")
    return f"cannot listen on {host}:{port}: {what} ({hint})"


def run() -> None:
    """The `relay` console script (pyproject.toml [project.scripts])."""
    sys.exit(main())


def _check_speech_files(config: Config) -> None:
    """Kokoro's and Whisper's files, when they are used without a fallback: a bad one stops
    the start (and check-config)."""
    if config.tts.provider == "embedded" and config.tts.fallback != "espeak":
        from asr_tts.tts import kokoro_files  # numpy: only when the files are checked

        try:
            kokoro_files.check(kokoro_files.locate())
        except kokoro_files.ModelFileError as exc:
            raise ConfigError(f"tts.provider: {exc}") from exc
    if config.asr.uses_whisper and not config.asr.fallback:
        from asr_tts.asr.base import ASRError
        from asr_tts.asr.whisper import check_model  # numpy, hashlib: only when checked

        try:
            check_model(config.asr.model_dir)
        except ASRError as exc:
            fallback = '[asr] fallback = "pocketsphinx" starts without it'
            raise ConfigError(f"asr.provider: {exc} ({fallback})") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        _check_speech_files(config)
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
    # Only the workers share a port (SO_REUSEPORT). The process that starts them probes it
    # without sharing, so a port already held by any process, another relay's workers
    # included, fails here, once; port 0 resolves here too.
    reuse_port = WORKER_ENV in os.environ
    try:
        sock = listening_socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        print(listen_error(host, port, exc), file=sys.stderr)
        return 2
    metrics_sock = _metrics_socket(config, host, reuse_port)
    if isinstance(metrics_sock, str):
        sock.close()
        print(metrics_sock, file=sys.stderr)
        return 2
    if args.workers > 1:
        port = sock.getsockname()[1]
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        return run_workers(_strip(passthrough, ("--workers", "--port")), args.workers, port)
    from relay.run.server import serve  # the app and its models: only in serving processes

    tune_gc(config.server.gc_freeze, config.server.gc_gen0_threshold)
    uvloop.run(serve(config, sock, metrics_sock))
    return 0


def _metrics_socket(config: Config, host: str, reuse_port: bool) -> socket.socket | str | None:
    """The `[metrics] port` listener's socket (None when none is configured), or the one
    line saying why it cannot listen."""
    port = config.metrics.port
    if not port:
        return None
    host = config.metrics.host or host
    try:
        return listening_socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        return listen_error(host, port, exc, "[metrics] port")
