"""Running the relay: sockets, signals, graceful drain, and several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from protocol.errors import CloseCode
from relay.app import make_app
from relay.config.schema import Config
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0  # after the 1001 close frames, how long handlers get to finish


async def drain(app: web.Application, timeout_s: float) -> None:
    """Graceful drain: `/readyz` turns 503 and new devices and simulate calls are refused at
    once, turns in flight (a device's or a simulate stream's) get up to `timeout_s` to
    finish, then every device is closed with 1001 and every simulate stream ends."""
    relay = app[RELAY_KEY]
    relay.draining.set()
    sessions = [c.session for c in relay.connections.values()]
    log.info(
        "draining: %d devices connected, %d simulate streams",
        len(sessions),
        len(relay.simulations),
    )
    sessions += relay.simulations.values()
    busy = [asyncio.ensure_future(s.wait_idle()) for s in sessions]
    if busy:
        _done, pending = await asyncio.wait(busy, timeout=timeout_s)
        for fut in pending:
            fut.cancel()
        if pending:
            log.info("drain timeout: %d sessions still had a turn in flight", len(pending))
    readers = []
    for conn in list(relay.connections.values()):
        conn.link.request_close(CloseCode.GOING_AWAY)
        if conn.task is not None:
            readers.append(conn.task)
    for handler, session in list(relay.simulations.items()):
        session.link.request_close(CloseCode.GOING_AWAY)  # what is queued is still written
        readers.append(handler)
    if readers:
        await asyncio.wait(readers, timeout=CLOSE_WAIT_S)


async def serve(config: Config, sock: socket.socket) -> None:
    """Serve on `sock` until SIGTERM or SIGINT, then drain and stop."""
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
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
        await runner.cleanup()
    log.info("relay stopped")
