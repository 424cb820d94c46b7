"""Running the relay: sockets, signals, graceful drain, and several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket

from aiohttp import web

from protocol.errors import CloseCode
from relay.app import make_app, warm_up
from relay.config.schema import Config
from relay.device.connection import DEVICE_ROOM
from relay.edge import EDGE_KEY
from relay.http.api import metrics_app
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0  # after the 1001 close frames, how long handlers get to finish
# After answering a request whose body it did not read whole (413, a 408 for a stalled
# body), aiohttp reads and drops the rest for this long so that the client sees the answer
# rather than a reset; aiohttp's default is 10 s, which a stalled body would simply hold.
LINGER_S = 2.0


async def drain(app: web.Application, timeout_s: float) -> None:
    """Graceful drain: `/readyz` turns 503 and new devices and simulate calls are refused at
    once, turns in flight (a device's or a simulate stream's) get up to `timeout_s` to
    finish, then every device is closed with 1001 and every simulate stream ends."""
    relay, room = app[RELAY_KEY], app[DEVICE_ROOM]
    devices = room.connections
    relay.draining.set()
    sessions = [c.session for c in devices]
    log.info(
        "draining: %d devices connected, %d simulate streams", len(sessions), len(room.simulations)
    )
    sessions += room.simulations.values()
    busy = [asyncio.ensure_future(s.wait_idle()) for s in sessions]
    if busy:
        _done, pending = await asyncio.wait(busy, timeout=timeout_s)
        for fut in pending:
            fut.cancel()
        if pending:
            log.info("drain timeout: %d sessions still had a turn in flight", len(pending))
    readers = []
    for conn in devices:
        conn.request_close(CloseCode.GOING_AWAY)
        if conn.task is not None:
            readers.append(conn.task)
    for handler, session in list(room.simulations.items()):
        session.link.request_close(CloseCode.GOING_AWAY)  # what is queued is still written
        readers.append(handler)
    if readers:
        await asyncio.wait(readers, timeout=CLOSE_WAIT_S)


async def start(app: web.Application, sock: socket.socket) -> tuple[web.AppRunner, asyncio.Server]:
    """Serve `app` on the listening `sock`, every socket through the edge (relay/edge.py).
    Stop with `server.close()`, then `runner.cleanup()`."""
    edge = app[EDGE_KEY]
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        keepalive_timeout=edge.cfg.keepalive_timeout_s,
        lingering_time=LINGER_S,
        logger=edge.server_log,  # a malformed request head: a count and a DEBUG line
    )
    await runner.setup()
    return runner, await edge.listen(runner, sock)


def raise_descriptor_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one, as Go's runtime does: the
    soft default (often 1024) exists for select(), which the event loop does not use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.info("descriptor limit stays at %d: %s", soft, exc)


async def start_metrics(app: web.Application, sock: socket.socket) -> web.AppRunner:
    """Serve the app's `/metrics` alone on `sock` (`[metrics] port`); stop with `cleanup()`."""
    runner = web.AppRunner(
        metrics_app(app[RELAY_KEY].metrics), handle_signals=False, access_log=None
    )
    await runner.setup()
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    log.info("metrics listening on http://%s:%d/metrics (no token)", host, port)
    return runner


async def serve(
    config: Config, sock: socket.socket, metrics_sock: socket.socket | None = None
) -> None:
    """Serve on `sock` (and `/metrics` alone on `metrics_sock`) until SIGTERM or SIGINT,
    then drain and stop."""
    raise_descriptor_limit()
    app = make_app(config)
    runner, server = await start(app, sock)
    metrics_runner = None if metrics_sock is None else await start_metrics(app, metrics_sock)
    warm_up(app)
    host, port = sock.getsockname()[:2]
    log.info("relay listening on http://%s:%d (pid %d)", host, port, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stop requested: draining for up to %.0fs", config.server.drain_timeout_s)
        await drain(app, config.server.drain_timeout_s)
    finally:
        server.close()
        if metrics_runner is not None:  # scraped until the drain ends
            await metrics_runner.cleanup()
        await runner.cleanup()
    log.info("relay stopped")
