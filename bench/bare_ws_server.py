"""Baseline for bench.idle: a bare aiohttp + uvloop WebSocket server.

It does the least a device server can: upgrade, answer the first text message with a small
hello-like JSON, then read until the peer closes. Its RSS per connection is what aiohttp
itself costs; the relay's figure is compared with it.

    python -m bench.bare_ws_server --port P      (GET /healthz, WebSocket at any other path)
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import orjson
import uvloop
from aiohttp import WSMsgType, web


async def websocket(request: web.Request) -> web.StreamResponse:
    """Upgrade; reply once to the first text frame; read until close."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    greeted = False
    async for msg in ws:
        if msg.type == WSMsgType.TEXT and not greeted:
            greeted = True
            reply = {"type": "hello", "transport": "websocket"}
            reply["session_id"] = secrets.token_urlsafe(16)
            await ws.send_frame(orjson.dumps(reply), WSMsgType.TEXT)
    return ws


async def healthz(_request: web.Request) -> web.Response:
    """Readiness for the benchmark's wait loop."""
    return web.Response(text="ok")


def make_app() -> web.Application:
    """The whole server."""
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", websocket)
    return app


def main() -> None:
    """Serve on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
