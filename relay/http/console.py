"""The browser console at `/console`: a static page that acts as a virtual device over the
device WebSocket (docs/protocol.md §1), served from package data when `[console] enabled`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

PATH = "/console"
_PAGE = "console.html"
_ASSETS = {
    "console.js": "text/javascript",
    "console-worklet.js": "text/javascript",
    "console.css": "text/css",
}
# Scripts and styles from this origin only (no inline code, so injected markup cannot run);
# WebSockets and the push API may live on another relay, hence the schemes in connect-src.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self' ws: wss: http: https:; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """Register `/console` and its assets; the files are read once, here."""
    static = resources.files("relay").joinpath("static")
    page = _file(static.joinpath(_PAGE).read_bytes(), "text/html")
    app.router.add_get(PATH, page)
    app.router.add_get(PATH + "/", _redirect)  # relative asset URLs resolve from /console
    for name, content_type in _ASSETS.items():
        body = static.joinpath(name).read_bytes()
        app.router.add_get(f"{PATH}/{name}", _file(body, content_type))


def _file(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    return handler


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PATH)
