"""Running the relay: sockets, signals, graceful drain, and several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from protocol.errors import CloseCode
from relay.app import make_app, warm_up
from relay.config.schema import Config
from relay.device.connection import DEVICE_ROOM
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0  # after the 1001 close frames, how long handlers get to finish


async def drain(app: web.Application, timeout_s: float) -> None:
    """Graceful drain: `/readyz` turns 503 and new devices are refused at once, turns in
    flight get up to `timeout_s` to finish, then every device is closed with 1001."""
    relay, devices = app[RELAY_KEY], app[DEVICE_ROOM].connections
    relay.draining.set()
    conns = list(devices)
    log.info("draining: %d devices connected", len(conns))
    busy = [asyncio.ensure_future(c.session.wait_idle()) for c in conns]
    if busy:
        _done, pending = await asyncio.wait(busy, timeout=timeout_s)
        for fut in pending:
            fut.cancel()
        if pending:
            log.info("drain timeout: %d devices still had a turn in flight", len(pending))
    readers = []
    for conn in devices:
        conn.request_close(CloseCode.GOING_AWAY)
        if conn.task is not None:
            readers.append(conn.task)
    if readers:
        await asyncio.wait(readers, timeout=CLOSE_WAIT_S)


async def serve(config: Config, sock: socket.socket) -> None:
    """Serve on `sock` until SIGTERM or SIGINT, then drain and stop."""
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    warm_up(app)
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
