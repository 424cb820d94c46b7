"""Application factory: routes, resources (`AppKey` + `cleanup_ctx`), graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from asr_tts.embedded import EmbeddedTTS
from asr_tts.speaker import Speaker
from bridges.business import BusinessClient
from bridges.http import HTTPClient
from metrics.registry import Metrics
from protocol.codes import CloseCode
from relay import api
from relay.config import Config
from relay.context import Relay
from relay.turn import TurnDeps
from relay.ws import RELAY_KEY, idle_sweeper, websocket_handler

log = logging.getLogger(__name__)

WS_PATHS = ("/v1/ws/", "/xiaozhi/v1/")


def make_app(config: Config, *, metrics: Metrics | None = None) -> web.Application:
    """Build the relay application for `config`."""
    app = web.Application(middlewares=[api.api_auth])
    for path in WS_PATHS:
        app.router.add_get(path, websocket_handler)
        app.router.add_get(path.rstrip("/"), websocket_handler)
    app.router.add_post("/api/v1/simulate", api.simulate)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.cleanup_ctx.append(_resources(config, metrics or Metrics()))
    app.on_shutdown.append(_close_devices)  # the last resort; relay.server drains first
    return app


def _resources(
    config: Config, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-codec")
        http = HTTPClient()
        tts = EmbeddedTTS(
            max_concurrency=config.tts.max_concurrency, timeout_s=config.tts.timeout_s
        )
        speaker = Speaker({tts.name: tts}, config.tts.provider, executor)
        targets = {b.name: b.target() for b in config.business}
        device_targets = {d: targets[b.name] for b in config.business for d in b.devices}
        app[RELAY_KEY] = Relay(
            config=config,
            metrics=metrics,
            deps=TurnDeps(BusinessClient(http), speaker, metrics),
            targets=targets,
            default_target=targets[config.business[0].name] if config.business else None,
            device_targets=device_targets,
        )
        sweeper = asyncio.get_running_loop().create_task(idle_sweeper(app[RELAY_KEY]))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.wait([sweeper])
            await http.close()
            executor.shutdown(wait=False, cancel_futures=True)

    return ctx


async def _close_devices(app: web.Application) -> None:
    # aiohttp docs (web_advanced): close open WebSockets with 1001 on shutdown.
    relay = app[RELAY_KEY]
    relay.draining.set()
    for conn in list(relay.connections.values()):
        conn.link.request_close(CloseCode.GOING_AWAY)
