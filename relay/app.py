"""Application factory: routes, resources (`AppKey` + `cleanup_ctx`), graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web

from aioutil import cancel_and_wait
from asr_tts.asr.pool import DecoderPool
from bridges.business import BusinessClient
from bridges.http import HTTPClient
from metrics.registry import Metrics
from protocol.errors import CloseCode
from protocol.mcp import ToolAnswer, ToolRequest
from protocol.node import PushReason
from relay.auth.device import DeviceAuthenticator
from relay.auth.handshake import canonical_device_id
from relay.auth.tokens import open_token_store
from relay.cluster.base import Cluster, LocalCluster, Presence
from relay.cluster.redis import RedisCluster
from relay.cluster.redis_sharded import ShardedCluster
from relay.config.load import WORKER_ENV
from relay.config.schema import Config
from relay.device.connection import DEVICE_ROOM, DeviceRoom
from relay.device.endpoint import idle_sweeper, websocket_handler
from relay.device.turn import TurnDeps
from relay.edge import EDGE_KEY, Edge, edge_middleware
from relay.http import api, devices, ota, speech, tools
from relay.http.console import add_routes as add_console_routes
from relay.providers import build_speaker, build_voice
from relay.resources import RELAY_KEY, Relay

log = logging.getLogger(__name__)


WS_PATHS = ("/v1/ws/", "/xiaozhi/v1/")


def make_app(config: Config, *, metrics: Metrics | None = None) -> web.Application:
    """Build the relay application for `config`."""
    metrics = metrics or Metrics()
    metrics.name_businesses(b.name for b in config.business)  # the `business` label's values
    app = web.Application(middlewares=[edge_middleware, api.api_auth])
    app[EDGE_KEY] = Edge(config.server, metrics)  # used when relay.run.server serves the app
    for path in WS_PATHS:
        app.router.add_get(path, websocket_handler)
        app.router.add_get(path.rstrip("/"), websocket_handler)
    app.router.add_post("/api/v1/simulate", api.simulate)
    app.router.add_post("/api/v1/devices/{device_id}/messages", devices.push)
    app.router.add_get("/api/v1/devices", devices.list_devices)
    app.router.add_get("/api/v1/devices/{device_id}", devices.get_device)
    app.router.add_get("/api/v1/devices/{device_id}/tools", tools.list_tools)
    app.router.add_post("/api/v1/devices/{device_id}/tools/{name}", tools.call_tool)
    app.router.add_get("/api/v1/voices", api.voices)
    # Speech over HTTP for partners: the relay's own recogniser and voice (docs/integration.md §4).
    app.router.add_post("/api/v1/stt", speech.stt)
    app.router.add_post("/api/v1/tts", speech.tts)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    for path in ota.PATHS:  # docs/protocol.md §1.0: GET, or POST with the system-info JSON
        for route in (path, path.rstrip("/")):
            app.router.add_get(route, ota.handle)
            app.router.add_post(route, ota.handle)
            app.router.add_route("OPTIONS", route, ota.preflight)  # browsers' CORS preflight
    if config.console.enabled:  # a virtual device in the browser; off by default
        add_console_routes(app)
    app.cleanup_ctx.append(_resources(config, metrics))
    app.on_shutdown.append(_close_devices)  # the last resort; relay.run.server drains first
    return app


def _resources(
    config: Config, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-codec")
        audio_executor = ThreadPoolExecutor(
            max_workers=config.vad.audio_threads, thread_name_prefix="relay-audio"
        )
        http = HTTPClient()
        # Cloud ASR/TTS providers: low request rates, WebSockets, multipart: aiohttp's client.
        cloud = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        speaker = build_speaker(config, cloud, executor, metrics)
        voice = build_voice(config, cloud, audio_executor, metrics)
        rc = config.redis
        redis = open_token_store(rc.url, rc.mode, rc.master_name) if rc.url else None
        cluster = build_cluster(config)
        targets = {b.name: b.target() for b in config.business}
        device_targets = {  # entries may be MACs with colons: canonical form (§1.1)
            canonical_device_id(d): targets[b.name] for b in config.business for d in b.devices
        }
        app[RELAY_KEY] = Relay(
            config=config,
            metrics=metrics,
            targets=targets,
            default_target=targets[config.business[0].name] if config.business else None,
            device_targets=device_targets,
            cluster=cluster,
            authenticator=DeviceAuthenticator(config.auth, redis),
        )
        app[DEVICE_ROOM] = room = DeviceRoom(
            deps=TurnDeps(
                BusinessClient(http),
                speaker,
                metrics,
                config.tts.stop_margin_ms / 1000,
                log_text_chars=config.log.stt_chars,
            ),
            voice=voice,
            detect=config.listen.rules(),
        )
        local = room.connections

        async def deliver(device_id: str, message: bytes) -> PushReason | None:
            return await devices.deliver(local, device_id, message)

        async def replace(device_id: str, session_id: str) -> None:
            if local.holds(device_id, session_id) and (conn := local.get(device_id)):
                conn.request_close(CloseCode.REPLACED)

        def local_devices() -> list[Presence]:
            return local.presences(cluster.node_id)

        async def serve_tools(device_id: str, req: ToolRequest) -> ToolAnswer:
            return await tools.serve(local, device_id, req)

        cluster.serve_tools(serve_tools)
        await cluster.start(deliver, replace, local_devices)
        # Each business once, before serving: a warning for one that cannot be reached (at
        # most its connect_timeout_s), never a refusal to start.
        await room.deps.reach.probe(targets.values())
        sweeper = asyncio.get_running_loop().create_task(idle_sweeper(app[RELAY_KEY], local))
        try:
            yield
        finally:
            await cancel_and_wait(sweeper)
            await cluster.stop()
            speaker.close()  # Kokoro's worker processes end
            if isinstance(voice.asr, DecoderPool):
                voice.asr.close()  # its decoder processes exit after their running call
            if redis is not None:
                await redis.aclose()
            await http.close()
            await cloud.close()
            if isinstance(voice.asr, DecoderPool):
                await voice.asr.wait_closed()
            executor.shutdown(wait=False, cancel_futures=True)
            audio_executor.shutdown(wait=False, cancel_futures=True)

    return ctx


def warm_up(app: web.Application) -> None:
    """Load the embedded recogniser's first decoder and Kokoro's first worker now rather than
    at the first utterance and answer (`relay serve`; tests start them when they speak)."""
    room = app[DEVICE_ROOM]
    room.deps.speaker.warm()
    voice = room.voice
    if voice is not None and isinstance(voice.asr, DecoderPool):
        voice.asr.warm()


async def _close_devices(app: web.Application) -> None:
    # aiohttp docs (web_advanced): close open WebSockets with 1001 on shutdown.
    app[RELAY_KEY].draining.set()
    for conn in app[DEVICE_ROOM].connections:
        conn.request_close(CloseCode.GOING_AWAY)


def build_cluster(config: Config) -> Cluster:
    """The cluster layer: Redis when `[redis] url` is set (one Redis, a Sentinel-managed
    primary, or a Redis Cluster: `[redis] mode`), else this node alone in memory."""
    node_id = config.redis.node_id or f"{socket.gethostname()}-{os.getpid()}"
    worker = os.environ.get(WORKER_ENV)
    if config.redis.node_id and worker is not None:
        node_id = f"{node_id}-{worker}"  # each worker is a node: its own inbox and presence
    if not config.redis.url:
        return LocalCluster(node_id)
    rc = config.redis
    if rc.mode == "cluster":
        ttl, beat = rc.presence_ttl_s, rc.heartbeat_s
        return ShardedCluster(rc.url, node_id, presence_ttl_s=ttl, heartbeat_s=beat)
    return RedisCluster(
        rc.url,
        node_id,
        presence_ttl_s=rc.presence_ttl_s,
        heartbeat_s=rc.heartbeat_s,
        mode=rc.mode,
        master=rc.master_name,
    )
