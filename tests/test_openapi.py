"""docs/openapi.yaml against the running relay.

Schemathesis drives every HTTP operation of the spec against a relay served on a loopback
port (aiohttp has no in-process ASGI/WSGI entry, so the relay, a quick fake business and a
connected device run on a uvloop in a background thread) and checks that every answer has a
documented status, content type, headers and body schema, and that nothing answers 5xx.
The WebSocket paths are left out of schemathesis: its HTTP client cannot perform the
upgrade, and a 101 is a protocol switch, not a body to validate. The explicit tests below
cover them, and every documented status that fuzzing cannot reach (a connected device,
draining, device authentication, Redis away), validating each answer against the spec.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import jsonschema_rs
import orjson
import pytest
import schemathesis
import uvloop
import yaml
from aiohttp import ClientSession, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV31SpecValidator

from protocol.errors import HTTP, ApiError
from protocol.mcp import REASONS
from protocol.node import PushReason
from relay.app import make_app
from relay.config.load import parse
from relay.http import tools as tools_api
from relay.resources import RELAY_KEY
from tests.relay.fakes import open_stream, session_of, sse
from tests.relay.test_simulate import closed_port, parse_sse

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAC = "66:9C:4B:DA:13:EA"
DEVICE = "669C4BDA13EA"  # the spec's example device_id: examples hit a connected device
WS_PATHS = ("/xiaozhi/v1/", "/v1/ws/")
AGENTS = ("fake", "down")
HELLO = {"type": "hello", "version": 1, "transport": "websocket"}
T = TypeVar("T")


# ---- the spec as JSON Schema ------------------------------------------------------------


def component(name: str) -> dict[str, Any]:
    """A schema of `components/schemas` with the spec's components alongside, for $ref."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/components/schemas/{name}",
        "components": SPEC["components"],
    }


def validate(schema: dict[str, Any], instance: Any) -> None:
    """Raise with every violation listed when `instance` does not match `schema`."""
    root = {"components": SPEC["components"], **schema}
    errors = [str(e) for e in jsonschema_rs.validator_for(root).iter_errors(instance)]
    assert not errors, (instance, errors)


def response_spec(path: str, method: str, status: int) -> dict[str, Any]:
    """The documented response object (references resolved); fails when undocumented."""
    responses = SPEC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path}: status {status} is not documented"
    resp: dict[str, Any] = responses[str(status)]
    ref = resp.get("$ref")
    if isinstance(ref, str):
        resp = SPEC["components"]["responses"][ref.rsplit("/", 1)[1]]
    return resp


def check_answer(path: str, method: str, status: int, content_type: str, body: bytes) -> Any:
    """Check an answer against the spec: status and content type documented, JSON bodies
    valid against their schema. Returns the decoded JSON (or the text)."""
    resp = response_spec(path, method, status)
    media = content_type.split(";")[0].strip()
    content = resp.get("content", {})
    assert media in content, f"{method} {path} {status}: {media} not in {sorted(content)}"
    if media != "application/json":
        return body.decode() if media.startswith("text/") else body  # audio stays bytes
    data = orjson.loads(body)
    validate(content[media]["schema"], data)
    return data


# ---- the live relay on a background loop --------------------------------------------------


async def quick_business(request: web.Request) -> web.StreamResponse:
    """A business that answers at once: only `hello` is spoken (so fuzzed turns stay fast),
    anything else gets a command; every event echoes details.session_id (§2.3)."""
    body = orjson.loads(await request.read())
    sid = session_of(body)
    resp = await open_stream(request)
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    if body.get("type") == "chat" and details.get("msg") == "hello":
        event = {"event": "message", "type": "chat", "details": {"answer": "Hi."}}
    else:
        event = {"event": "message", "type": "command", "details": {"actions": []}}
    await resp.write(sse({**event, "session_id": sid}))
    await resp.write(sse({"event": "message_end", "session_id": sid}))
    return resp


def relay_config(business_url: str, **extra: Any) -> dict[str, Any]:
    """The relay under test: API tokens on, a fast business and one that is down."""
    return {
        "server": {"hello_timeout_s": 5.0},
        "api": {"tokens": [TOKEN]},
        # The light speech providers: fuzzed /api/v1/tts and /api/v1/stt bodies are spoken
        # and heard, which Kokoro and Whisper would make slow.
        "tts": {"provider": "espeak"},
        "asr": {"provider": "pocketsphinx", "pool_size": 1},
        "business": [
            {"name": "fake", "url": business_url, "first_event_timeout_s": 3.0},
            {
                "name": "down",
                "url": f"http://127.0.0.1:{closed_port()}/chat",
                "connect_timeout_s": 1.0,
            },
        ],
        **extra,
    }


class LiveRelay:
    """Relay + fake business + one connected device, served from a uvloop in a thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[TestServer] = []
        self._http: ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self.base_url = ""
        self.device_messages: list[bytes] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def __enter__(self) -> LiveRelay:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _start(self) -> None:
        business = web.Application()
        business.router.add_post("/chat", quick_business)
        biz = TestServer(business, host="127.0.0.1")
        await biz.start_server()
        self._servers.append(biz)
        relay = TestServer(
            make_app(parse(relay_config(str(biz.make_url("/chat"))))), host="127.0.0.1"
        )
        await relay.start_server()
        self._servers.append(relay)
        self.base_url = str(relay.make_url("")).rstrip("/")
        self._http = ClientSession()
        ws = await self._http.ws_connect(f"{self.base_url}/xiaozhi/v1/", headers={"Device-Id": MAC})
        await ws.send_str(orjson.dumps(HELLO).decode())
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "hello"

        async def read() -> None:  # drain: a device that stops reading is dropped (1013)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.device_messages.append(msg.data.encode())

        self._reader = asyncio.get_running_loop().create_task(read())

    async def _stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        for server in reversed(self._servers):
            await server.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRelay]:
    with LiveRelay() as stack:
        yield stack


# ---- schemathesis ---------------------------------------------------------------------------


# The recordings of /api/v1/stt are bytes as they are, like any binary body.
schemathesis.serializer.alias(
    ["audio/wav", "audio/L16", "application/x-opus-frames"], "application/octet-stream"
)


def _fuzz_schema() -> schemathesis.BaseSchema:
    raw = copy.deepcopy(SPEC)
    # `agent` is free-form in the spec (any [[business]] name); narrowed to the names this
    # relay has, so that valid generated bodies are truly valid (else 400 unknown_agent).
    raw["components"]["schemas"]["Agent"]["enum"] = list(AGENTS)
    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
            "auth": {"openapi": {"apiToken": {"bearer": TOKEN}}},
            "request-timeout": 20,
            "operations": [
                {
                    # A binary schema cannot say what a playable recording is: bytes that
                    # match it may still be no WAV (422), as the spec documents.
                    "include-path": "/api/v1/stt",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "401", "413", "422", "5xx"]
                        }
                    },
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_dict(raw, config=config)
    return schema.exclude(path=list(WS_PATHS))


FUZZ = _fuzz_schema()
_parametrize = cast(Callable[[Callable[..., None]], Callable[..., None]], FUZZ.parametrize())


@_parametrize
def test_every_operation_matches_the_spec(case: schemathesis.Case[Any], live: LiveRelay) -> None:
    case.call_and_validate(base_url=live.base_url)


# ---- the spec covers the app ------------------------------------------------------------


def test_spec_is_valid_openapi() -> None:
    # 3.1, not 3.2: Postman, Swagger UI and the code generators integrators use read 3.1.
    assert SPEC["openapi"].startswith("3.1.")
    errors = [e.message for e in OpenAPIV31SpecValidator(SPEC).iter_errors()]
    assert not errors, errors
    schemathesis.openapi.from_dict(SPEC).validate()
    for name in SPEC["components"]["schemas"]:
        jsonschema_rs.validator_for(component(name))  # each a valid JSON Schema 2020-12


def test_every_route_is_documented() -> None:
    app = make_app(parse({}))
    routes = {
        (r.method, r.resource.canonical if r.resource else "")
        for r in app.router.routes()
        if r.method != "HEAD"
    }
    documented = {
        (method.upper(), path.rstrip("/") or "/")
        for path, item in SPEC["paths"].items()
        for method in item
    }
    # aiohttp spells {device_id} the same way; each slashed path also answers without it.
    assert {(m, p.rstrip("/")) for m, p in routes} == documented


def test_push_statuses_match_the_relay() -> None:
    responses = SPEC["paths"]["/api/v1/devices/{device_id}/messages"]["post"]["responses"]
    for reason in get_args(PushReason):
        status = HTTP[ApiError(reason)][0]
        content = responses[str(status)]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/PushNotDelivered"}
        assert reason in responses[str(status)]["description"]


def test_tool_statuses_match_the_relay() -> None:
    # Every reason a tools request can go unanswered has its status documented, with the
    # schema that names the reason (docs/protocol.md §3.2).
    call = SPEC["paths"]["/api/v1/devices/{device_id}/tools/{name}"]["post"]["responses"]
    listing = SPEC["paths"]["/api/v1/devices/{device_id}/tools"]["get"]["responses"]
    for reason in REASONS:
        if reason in ("bad_arguments", "too_many_calls"):
            continue  # a 400 for the API; only a business's tool_result carries them
        status = str(HTTP[tools_api.ERRORS[reason][0]][0])
        content = call[status]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/ToolNotAnswered"}
        assert reason in call[status]["description"]
        if reason != "unknown_tool":
            assert reason in listing[status]["description"], reason


# ---- statuses fuzzing cannot reach, each answer checked against the spec ---------------


async def call(
    http: ClientSession,
    live: LiveRelay,
    method: str,
    path: str,
    spec_path: str | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    async with http.request(method, live.base_url + path, **kwargs) as resp:
        body = await resp.read()
        data = check_answer(
            spec_path or path, method, resp.status, resp.headers["Content-Type"], body
        )
        return resp.status, data


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def test_api_errors_are_documented(live: LiveRelay, http: ClientSession) -> None:
    simulate = "/api/v1/simulate"
    cases: list[tuple[str, str, str | None, dict[str, Any], int, str]] = [
        ("POST", simulate, None, {"data": b"{"}, 400, "bad_json"),
        ("POST", simulate, None, {"json": {"device_id": "d"}}, 400, "bad_request"),
        ("POST", simulate, None, {"json": {"device_id": "d", "text": " "}}, 400, "bad_request"),
        (
            "POST",
            simulate,
            None,
            {"json": {"device_id": "d", "text": "hi", "agent": "nobody"}},
            400,
            "unknown_agent",
        ),
        ("POST", simulate, None, {"data": b" " * (65 * 1024)}, 413, "too_large"),
        ("GET", "/api/v1/devices?limit=0", "/api/v1/devices", {}, 400, "bad_request"),
        ("GET", "/api/v1/devices?limit=x", "/api/v1/devices", {}, 400, "bad_request"),
        ("GET", "/api/v1/devices/nobody", "/api/v1/devices/{device_id}", {}, 404, "offline"),
    ]
    push = "/api/v1/devices/{device_id}/messages"
    for body, error_type in [
        (b"[", "bad_json"),
        (b'{"command":{},"speak":"x"}', "bad_request"),
        (b'{"speak":"x","voice":1}', "bad_request"),
        (orjson.dumps({"speak": "x" * 2001}), "bad_request"),
        (b'{"command":[1]}', "bad_request"),
        (b'{"device":{"type":"hello"}}', "bad_request"),
        (b'{"device":{"type":"alert","status":"s","message":"m"}}', "bad_request"),
        (b'{"device":{"type":"llm","emotion":"x"},"speak":"x"}', "bad_request"),
    ]:
        cases.append(
            ("POST", f"/api/v1/devices/{DEVICE}/messages", push, {"data": body}, 400, error_type)
        )
    cases.append(
        ("POST", "/api/v1/devices/nobody/messages", push, {"json": {"speak": "x"}}, 404, "offline")
    )
    cases.append(
        (
            "POST",
            f"/api/v1/devices/{DEVICE}/messages",
            push,
            {"data": b"{" + b" " * 70000},
            413,
            "too_large",
        )
    )
    for method, path, spec_path, kwargs, status, error_type in cases:
        got, data = await call(http, live, method, path, spec_path, headers=AUTH, **kwargs)
        assert (got, data["errorType"]) == (status, error_type), (method, path, data)

    for method, path, spec_path in [
        ("POST", simulate, None),
        ("POST", "/api/v1/devices/x/messages", push),
        ("GET", "/api/v1/devices", None),
        ("GET", "/api/v1/devices/x", "/api/v1/devices/{device_id}"),
        ("GET", "/metrics", None),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            got, data = await call(http, live, method, path, spec_path, headers=headers)
            assert (got, data["errorType"]) == (401, "unauthorized")


async def test_push_and_presence_of_a_connected_device(
    live: LiveRelay, http: ClientSession
) -> None:
    push = "/api/v1/devices/{device_id}/messages"
    command = {"event": "message", "type": "command", "details": {"actions": [{"action": "nod"}]}}
    status, data = await call(
        http,
        live,
        "POST",
        f"/api/v1/devices/{MAC}/messages",
        push,
        json={"command": command},
        headers=AUTH,
    )
    assert (status, data["delivered"]) == (200, True)
    status, data = await call(
        http,
        live,
        "POST",
        f"/api/v1/devices/{DEVICE}/messages",
        push,
        json={"speak": "ok", "voice": {"tts_provider": "nope", "speed_ratio": 1.2}},
        headers=AUTH,
    )
    assert (status, data["delivered"]) == (200, True)
    for device, expected in [
        ({"type": "alert", "status": "s", "message": "m", "emotion": "sad"}, (200, True)),
        ({"type": "notify", "event": "config_updated"}, (409, False)),  # not declared
    ]:
        status, data = await call(
            http,
            live,
            "POST",
            f"/api/v1/devices/{DEVICE}/messages",
            push,
            json={"device": device},
            headers=AUTH,
        )
        assert (status, data["delivered"]) == expected, data
    assert data["reason"] == "not_supported"
    status, data = await call(
        http, live, "GET", f"/api/v1/devices/{MAC}", "/api/v1/devices/{device_id}", headers=AUTH
    )
    assert (status, data["device_id"]) == (200, DEVICE)
    status, data = await call(
        http, live, "GET", "/api/v1/devices?limit=1", "/api/v1/devices", headers=AUTH
    )
    assert status == 200
    assert [d["device_id"] for d in data["devices"]] == [DEVICE]
    assert data["next_cursor"] is None

    # What the device got for the command: the §2.4 envelope the spec describes.
    async with asyncio.timeout(5):
        while not any(b'"nod"' in m for m in live.device_messages):
            await asyncio.sleep(0.02)
    envelope = next(orjson.loads(m) for m in live.device_messages if b'"nod"' in m)
    validate(component("CustomMessage"), envelope)
    assert envelope["payload"]["original_request_type"] == "push"
    assert envelope["payload"]["business_response"] == command


async def test_simulate_stream_events_match_the_spec(live: LiveRelay, http: ClientSession) -> None:
    async with asyncio.timeout(20):
        resp = await http.post(
            f"{live.base_url}/api/v1/simulate",
            params={"audio": "base64"},
            json={"device_id": MAC, "text": "hello"},
            headers=AUTH,
        )
        body = await resp.read()
    check_answer("/api/v1/simulate", "POST", resp.status, resp.headers["Content-Type"], body)
    assert resp.status == 200
    events = parse_sse(body.decode())
    audio = [e.data for e in events if e.name == "audio"]
    messages = [e.data for e in events if e.name == "message"]
    assert audio, "no audio"
    assert {e.name for e in events} == {"audio", "message"}
    for event in events:
        validate(component("SimulateEvent"), {"event": event.name, "data": "{}"})
    for data in audio:
        validate(component("AudioFrame"), data)
    for data in messages:
        validate(component("DeviceMessage"), data)
    kinds = {(m["type"], m.get("state")) for m in messages}
    assert {("stt", None), ("tts", "start"), ("tts", "sentence_start"), ("tts", "stop")} <= kinds
    assert ("custom", None) in kinds

    # A business that is down: one relay error event in the envelope (docs/protocol.md §2.6).
    async with asyncio.timeout(20):
        resp = await http.post(
            f"{live.base_url}/api/v1/simulate",
            json={"device_id": MAC, "agent": "down", "custom": {"type": "get"}},
            headers=AUTH,
        )
        events = parse_sse(await resp.text())
    assert resp.status == 200
    errors = [e.data["payload"]["business_response"] for e in events]
    assert len(errors) == 1
    validate(component("RelayErrorEvent"), errors[0])
    assert errors[0]["details"]["code"] == "business_unreachable"


LONE_SURROGATE = (
    "relay bug: a JSON string holding a lone surrogate escape (\\ud800) passes jsonutil.loads "
    "(stdlib fallback) and validation, then orjson/espeak fail on it after the answer started: "
    "simulate's 200 stream is cut with a traceback, a pushed speak answers delivered while "
    "the device hears tts start and never tts stop"
)


async def test_simulate_refuses_a_lone_surrogate(live: LiveRelay, http: ClientSession) -> None:
    body = b'{"device_id":"d","text":"hi \\ud800"}'
    status, data = await call(http, live, "POST", "/api/v1/simulate", data=body, headers=AUTH)
    assert status == 400
    assert data["errorType"] in {"bad_json", "bad_request"}


async def test_push_refuses_a_lone_surrogate(live: LiveRelay, http: ClientSession) -> None:
    body = b'{"speak":"hi \\ud800"}'
    path = f"/api/v1/devices/{DEVICE}/messages"
    spec_path = "/api/v1/devices/{device_id}/messages"
    status, data = await call(http, live, "POST", path, spec_path, data=body, headers=AUTH)
    assert status == 400
    assert data["errorType"] in {"bad_json", "bad_request"}


async def test_health_readiness_and_metrics(live: LiveRelay, http: ClientSession) -> None:
    status, _ = await call(http, live, "GET", "/healthz")
    assert status == 200
    status, _ = await call(http, live, "GET", "/readyz")
    assert status == 200
    status, text = await call(http, live, "GET", "/metrics", headers=AUTH)
    assert status == 200
    assert "relay_connections_active" in text


# ---- the WebSocket handshake and draining (apps under the test's own loop) -----------


async def ws_answer(client: TestClient[Any, Any], path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.get(path, **kwargs)
    body = await resp.read()
    data = check_answer(
        path if "?" not in path else path.split("?")[0],
        "GET",
        resp.status,
        resp.headers["Content-Type"],
        body,
    )
    return resp.status, data


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize("path", WS_PATHS)
async def test_websocket_handshake_statuses(aiohttp_client: Any, path: str) -> None:
    cfg = {"auth": {"mode": "tokens", "tokens": ["dev-token"], "allowed_devices": [DEVICE, "d2"]}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    ok = {**UPGRADE, "Device-Id": MAC, "Authorization": "Bearer dev-token"}
    cases: list[tuple[dict[str, str], int, str]] = [
        ({**UPGRADE, "Authorization": "Bearer dev-token"}, 400, "no_device_id"),
        ({**ok, "Protocol-Version": "9"}, 400, "bad_version"),
        ({**UPGRADE, "Device-Id": MAC}, 401, "bad_token"),
        ({**ok, "Authorization": "Bearer nope"}, 401, "bad_token"),
        ({**ok, "Device-Id": "someone-else"}, 401, "device_not_allowed"),
    ]
    for headers, status, error_type in cases:
        got, data = await ws_answer(client, path, headers=headers)
        assert (got, data["errorType"]) == (status, error_type), headers
    # Not a WebSocket request at all: the server library's plain-text 400, documented.
    got, text = await ws_answer(
        client, path, headers={"Device-Id": MAC, "Authorization": "Bearer dev-token"}
    )
    assert got == 400
    assert isinstance(text, str)
    # The upgrade itself, also with the query-parameter form browsers use.
    ws = await client.ws_connect(f"{path}?device-id=d2&authorization=dev-token")
    await ws.send_str(orjson.dumps(HELLO).decode())
    assert (await ws.receive_json(timeout=5))["type"] == "hello"
    await ws.close()


async def test_token_store_unavailable_is_503(aiohttp_client: Any) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    cfg = {"auth": {"mode": "redis"}, "redis": {"url": url}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    got, data = await ws_answer(
        client, "/xiaozhi/v1/", headers={**UPGRADE, "Device-Id": MAC, "Authorization": "Bearer t"}
    )
    assert (got, data["errorType"]) == (503, "token_store_unavailable")


async def test_push_with_redis_away_is_503(aiohttp_client: Any) -> None:
    cfg = {"redis": {"url": f"redis://127.0.0.1:{closed_port()}/0"}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    resp = await client.post("/api/v1/devices/elsewhere/messages", json={"speak": "hi"})
    data = check_answer(
        "/api/v1/devices/{device_id}/messages",
        "POST",
        resp.status,
        resp.headers["Content-Type"],
        await resp.read(),
    )
    assert (resp.status, data["reason"]) == (503, "redis_unavailable")


async def test_draining_relay_answers_503(aiohttp_client: Any) -> None:
    app = make_app(parse({}))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    app[RELAY_KEY].draining.set()
    got, data = await ws_answer(client, "/readyz")
    assert (got, data["status"]) == (503, "draining")
    for path in WS_PATHS:
        got, data = await ws_answer(client, path, headers={**UPGRADE, "Device-Id": MAC})
        assert (got, data["errorType"]) == (503, "draining")
    resp = await client.post("/api/v1/simulate", json={"device_id": MAC, "text": "hi"})
    assert (resp.status, (await resp.json())["errorType"]) == (503, "draining")
    for path in ("/api/v1/stt", "/api/v1/tts"):
        resp = await client.post(path, data=b"{}", headers={"Content-Type": "audio/wav"})
        body = await resp.read()
        check_answer(path, "POST", resp.status, resp.content_type, body)
        assert (resp.status, orjson.loads(body)["errorType"]) == (503, "draining")


async def test_ota_statuses(aiohttp_client: Any) -> None:
    cfg = {"auth": {"allowed_devices": [DEVICE]}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    ota = "/xiaozhi/ota/"
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("GET", {"headers": {"Device-Id": MAC}}, 200, ""),
        (
            "POST",
            {"headers": {"Device-Id": MAC}, "json": {"application": {"version": "1.2.3"}}},
            200,
            "",
        ),
        ("GET", {}, 400, "no_device_id"),
        ("POST", {"headers": {"Device-Id": MAC}, "data": b"[1]"}, 400, "bad_json"),
        ("GET", {"headers": {"Device-Id": "someone-else"}}, 403, "device_not_allowed"),
        ("POST", {"headers": {"Device-Id": MAC}, "data": b" " * (65 * 1024)}, 413, "too_large"),
    ]
    for method, kwargs, status, error_type in cases:
        resp = await client.request(method, ota, **kwargs)
        body = await resp.read()
        data = check_answer(ota, method, resp.status, resp.headers["Content-Type"], body)
        assert resp.status == status, (method, kwargs, data)
        if error_type:
            assert data["errorType"] == error_type
        else:
            assert data["websocket"]["url"].endswith("/xiaozhi/v1/")
            assert resp.headers["Cache-Control"] == "no-store"

    off: TestClient[Any, Any] = await aiohttp_client(make_app(parse({"ota": {"enabled": False}})))
    resp = await off.get("/v1/ota/", headers={"Device-Id": MAC})
    data = check_answer(
        "/v1/ota/", "GET", resp.status, resp.headers["Content-Type"], await resp.read()
    )
    assert (resp.status, data["errorType"]) == (404, "ota_disabled")


async def test_ota_preflight_statuses(aiohttp_client: Any) -> None:
    page = "https://app.example"
    cfg = {"ota": {"cors_origins": [page]}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    off: TestClient[Any, Any] = await aiohttp_client(make_app(parse({"ota": {"enabled": False}})))
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "device-id"}
    cases: list[tuple[TestClient[Any, Any], dict[str, str], int, str]] = [
        (client, {"Origin": page, **asked}, 204, ""),
        (client, {}, 204, ""),
        (client, {"Origin": "https://elsewhere.example", **asked}, 403, "bad_origin"),
        (client, {"Origin": page, "Access-Control-Request-Headers": "a b"}, 400, "bad_request"),
        (off, {"Origin": page, **asked}, 404, "ota_disabled"),
    ]
    for path in ("/xiaozhi/ota/", "/v1/ota/"):
        for app_client, headers, status, error_type in cases:
            resp = await app_client.options(path, headers=headers)
            assert resp.status == status, (path, headers)
            if status == 204:
                response_spec(path, "OPTIONS", 204)
                assert not await resp.read()
                continue
            body = await resp.read()
            data = check_answer(path, "OPTIONS", resp.status, resp.headers["Content-Type"], body)
            assert data["errorType"] == error_type


async def test_websocket_bad_origin_is_documented(aiohttp_client: Any) -> None:
    cfg = {"server": {"check_origin": True}, "ota": {"cors_origins": ["https://app.example"]}}
    client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(cfg)))
    for path in WS_PATHS:
        headers = {**UPGRADE, "Device-Id": MAC, "Origin": "https://elsewhere.example"}
        got, data = await ws_answer(client, path, headers=headers)
        assert (got, data["errorType"]) == (403, "bad_origin")
