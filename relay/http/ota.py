"""The firmware's boot-time "OTA" check (docs/protocol.md §1.0): where to connect, with which
token and protocol version, and what time it is.

What xiaozhi firmware (78/xiaozhi-esp32, `main/ota.cc`, `main/application.cc`) does with
the answer, and so what this module promises:
- any status but 200 is a failed check: the device shows an error with the OTA URL and
  retries after 10, 20, 40 … s, ten times. A refusal is therefore a 4xx JSON body an
  operator can read in a log, never a 200 with an error inside.
- without a `websocket` object the firmware falls back to MQTT, so it is always sent, and
  `mqtt` never is. Each string or number under `websocket` is written to the device's
  settings; a key that is absent keeps the value stored before (a token provisioned some
  other way survives). `version` must be a number: it is read back as an integer.
- `firmware` is compared only when `version` and `url` are both strings; versions are split
  on dots and read with `stoi`, so only digits-and-dots versions are ever offered.
- `server_time.timestamp` (ms) plus `timezone_offset` (minutes) set the device clock.

Web pages call the same check with `fetch` from another origin (docs/protocol.md §1.8): the
paths answer CORS preflights, and answers to an allowed `Origin` carry
`Access-Control-Allow-Origin` (`relay.cors`); a request without `Origin` is answered as before.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from protocol import jsonutil
from protocol.errors import ApiError, Refusal
from relay import cors
from relay.answers import api_error, refused
from relay.auth.handshake import canonical_device_id
from relay.auth.tokens import mint
from relay.config.schema import AuthConfig, Config, OtaConfig
from relay.http.api import read_body
from relay.logsafe import printable
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

PATHS = ("/xiaozhi/ota/", "/v1/ota/")  # xiaozhi-server's path, Lingxi's path
WS_PATH = "/xiaozhi/v1/"  # where a derived websocket URL points (relay.app.WS_PATHS)
MAX_BODY = 64 * 1024  # the firmware's system-info JSON is a few KiB
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")
_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")  # what the firmware's stoi reads


@dataclass(frozen=True, slots=True)
class OtaRequest:
    """What a device said about itself in its OTA check."""

    raw_device_id: str  # as sent: HMAC tokens are signed over it (relay.tokens)
    device_id: str  # canonical (§1.1)
    client_id: str
    user_agent: str  # `board/version`
    app_version: str  # body `application.version`, else the User-Agent's version


_SYSTEM_INFO = "send the system-info JSON object"


class OtaRequestError(Refusal):
    """The check cannot be answered; mapped to one API error in `handle`."""


async def handle(request: web.Request) -> web.Response:
    """`/xiaozhi/ota/` and `/v1/ota/`, GET or POST: the answer the firmware stores (§1.0)."""
    return _with_cors(request, await _check(request))


async def preflight(request: web.Request) -> web.Response:
    """`OPTIONS` on the OTA paths: the CORS preflight a browser sends before its `fetch`
    with `Device-Id` and `Client-Id` headers (docs/protocol.md §1.8)."""
    return _with_cors(request, _preflight(request))


def _with_cors(request: web.Request, resp: web.Response) -> web.Response:
    # Errors too: a page can read why its check was refused (docs/protocol.md §1.8).
    origins = request.app[RELAY_KEY].config.ota.cors_origins
    resp.headers.update(cors.answer_headers(origins, request.headers.get("Origin")))
    return resp


def _disabled() -> web.Response:
    return api_error(ApiError.OTA_DISABLED, "the OTA check is disabled on this relay")


async def _check(request: web.Request) -> web.Response:
    config = request.app[RELAY_KEY].config
    if not config.ota.enabled:
        return _disabled()
    try:
        req = await parse_request(request)
        check_allowed(config.auth, req.device_id)
        url = websocket_url(request, config.ota)
    except OtaRequestError as exc:
        log.info("ota check refused (%s)", exc.code)
        return refused(exc)
    answer = build_answer(config, req, url, time.time())
    log.info(
        "[%s] ota check from %s", printable(req.device_id), printable(req.user_agent[:64] or "?")
    )
    # The answer may carry a device token: no cache may keep it.
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


def _preflight(request: web.Request) -> web.Response:
    cfg = request.app[RELAY_KEY].config.ota
    if not cfg.enabled:
        return _disabled()
    origin = request.headers.get("Origin")
    if origin is not None and cors.allow_origin(cfg.cors_origins, origin) is None:
        log.info("ota preflight refused (bad_origin)")
        return api_error(ApiError.BAD_ORIGIN, "this page's origin may not call the OTA check")
    allow_headers = cors.requested_headers(
        request.headers.get("Access-Control-Request-Headers", "")
    )
    if allow_headers is None:
        return api_error(
            ApiError.BAD_REQUEST,
            "Access-Control-Request-Headers is not a list of header names",
            f"comma-separated header names, at most {cors.MAX_REQUEST_HEADERS} characters",
        )
    if origin is None:  # not a CORS preflight: a plain OPTIONS (RFC 9110 §9.3.7)
        return web.Response(status=204, headers={"Allow": cors.ALLOW_METHODS})
    return web.Response(status=204, headers=cors.preflight_headers(allow_headers))


async def parse_request(request: web.Request) -> OtaRequest:
    """Headers and the optional JSON body of system information, decoded once."""
    raw_device_id = request.headers.get("Device-Id", "").strip()
    device_id = canonical_device_id(raw_device_id)
    if not device_id:
        raise OtaRequestError(
            ApiError.NO_DEVICE_ID, "Device-Id header required", "send the device's MAC address"
        )
    user_agent = request.headers.get("User-Agent", "").strip()
    body: Any = {}
    if request.body_exists:
        raw = await read_body(request, MAX_BODY)
        if raw is None:
            raise OtaRequestError(ApiError.TOO_LARGE, f"body over {MAX_BODY} bytes")
        if raw:  # empty: no system info; anything else must be JSON (whitespace is not)
            try:
                body = jsonutil.loads(raw)
            except ValueError as exc:
                raise OtaRequestError(ApiError.BAD_JSON, "body is not JSON", _SYSTEM_INFO) from exc
    if not isinstance(body, dict):
        raise OtaRequestError(ApiError.BAD_JSON, "body is not a JSON object", _SYSTEM_INFO)
    app = body.get("application")
    version = app.get("version") if isinstance(app, dict) else None
    if not isinstance(version, str) or not version:
        version = user_agent.rpartition("/")[2] if "/" in user_agent else ""
    return OtaRequest(
        raw_device_id=raw_device_id,
        device_id=device_id,
        client_id=request.headers.get("Client-Id", "").strip(),
        user_agent=user_agent,
        app_version=version.strip(),
    )


def check_allowed(auth: AuthConfig, device_id: str) -> None:
    """Refuse a device not in `[auth] allowed_devices` (entries compared in canonical form,
    a MAC with or without colons); an empty list allows every device."""
    if auth.allowed_devices and device_id not in {
        canonical_device_id(d) for d in auth.allowed_devices
    }:
        raise OtaRequestError(ApiError.DEVICE_NOT_ALLOWED, "device is not allowed on this relay")


def websocket_url(request: web.Request, cfg: OtaConfig) -> str:
    """`[ota] websocket_url`, else `ws(s)://<Host>/xiaozhi/v1/` from the request; behind a
    proxy, X-Forwarded-Proto/Host only when `trust_forwarded` (anyone can send them)."""
    if cfg.websocket_url:
        return cfg.websocket_url
    scheme, host = request.scheme, request.host
    if cfg.trust_forwarded:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        scheme = proto if proto in ("http", "https", "ws", "wss") else scheme
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or host
    if not _HOST.fullmatch(host):
        raise OtaRequestError(ApiError.BAD_HOST, "cannot derive the WebSocket URL from Host")
    ws_scheme = "wss" if scheme in ("https", "wss") else "ws"
    return f"{ws_scheme}://{host}{WS_PATH}"


def websocket_token(config: Config, req: OtaRequest, now: float) -> str | None:
    """The token for the device to send, per `[auth] mode`; None = leave the key out, so the
    device keeps a token it was given some other way."""
    auth = config.auth
    if auth.mode == "hmac":
        # Signed over the ids exactly as the device will send them at the handshake.
        return mint(auth.hmac_secret, req.client_id, req.raw_device_id, int(now))
    if auth.mode == "tokens":
        return auth.tokens[0] if config.ota.hand_out_static_token else None
    if auth.mode == "redis":
        return None  # bindings are made by whoever owns the token store, not by this check
    return ""  # "none": clear a stale token from an earlier server


def firmware_block(cfg: OtaConfig, req: OtaRequest) -> dict[str, str] | None:
    """The configured firmware; else the device's own version with no URL (never newer, as
    xiaozhi-server answers); None when that version is not one the firmware can parse."""
    if cfg.firmware_version:
        return {"version": cfg.firmware_version, "url": cfg.firmware_url}
    if _VERSION.fullmatch(req.app_version):
        return {"version": req.app_version, "url": ""}
    return None


def build_answer(config: Config, req: OtaRequest, url: str, now: float) -> dict[str, Any]:
    """The JSON the firmware reads (§1.0)."""
    ws: dict[str, Any] = {"url": url}
    token = websocket_token(config, req, now)
    if token is not None:
        ws["token"] = token
    ws["version"] = config.ota.protocol_version
    answer: dict[str, Any] = {
        "websocket": ws,
        "server_time": {
            "timestamp": int(now * 1000),
            "timezone_offset": config.ota.timezone_offset_min,
        },
    }
    firmware = firmware_block(config.ota, req)
    if firmware is not None:
        answer["firmware"] = firmware
    return answer
