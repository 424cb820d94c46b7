"""The firmware's OTA check (docs/protocol.md §1.0): what the device stores from the answer, and
that it then gets through the relay's own WebSocket handshake with it."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from relay.auth.tokens import mint, verify
from relay.config.load import parse
from relay.config.schema import Config, ConfigError
from relay.http.ota import OtaRequest, websocket_token
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device

MAC = "66:9c:4b:da:13:ea"  # the firmware sends its MAC in lower case
CANONICAL = "669C4BDA13EA"
CLIENT_ID = "3f2a9c1e-7b64-4d0e-9a51-0c8e2d6b1f47"
SECRET = "ota-secret-for-tests"
DEVICE_HEADERS = {
    "Device-Id": MAC,
    "Client-Id": CLIENT_ID,
    "User-Agent": "bread-compact-wifi/1.6.2",
    "Accept-Language": "zh-CN",
    "Activation-Version": "1",
    "Content-Type": "application/json",
}
SYSTEM_INFO = {
    "version": 2,
    "flash_size": 16777216,
    "mac_address": MAC,
    "uuid": CLIENT_ID,
    "chip_model_name": "esp32s3",
    "application": {"name": "xiaozhi", "version": "1.6.2", "idf_version": "v5.4"},
    "partition_table": [{"label": "nvs", "type": 1, "subtype": 2, "address": 36864}],
    "board": {"type": "bread-compact-wifi", "ssid": "lab", "rssi": -52, "mac": MAC},
}
PATHS = ["/xiaozhi/ota/", "/xiaozhi/ota", "/v1/ota/", "/v1/ota"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "devices.md"


async def ota(
    client: TestClient[Any, Any],
    *,
    path: str = "/xiaozhi/ota/",
    headers: dict[str, str] | None = None,
    body: Any = SYSTEM_INFO,
    status: int = 200,
) -> dict[str, Any]:
    """One OTA check as the firmware makes it: POST with the system info, GET without."""
    h = {**DEVICE_HEADERS, **(headers or {})}
    if body is None:
        resp = await client.get(path, headers=h)
    else:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        resp = await client.post(path, headers=h, data=data)
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/json")
    answer: dict[str, Any] = orjson.loads(text)
    if status != 200:
        assert set(answer) == {"error", "errorType", "hint"}
    return answer


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_both_paths_answer_get_and_post(
    make_relay: RelayFactory, path: str, method: str
) -> None:
    client = await make_relay()
    answer = await ota(client, path=path, body=None if method == "GET" else SYSTEM_INFO)
    port = client.server.port
    assert answer["websocket"] == {
        "url": f"ws://127.0.0.1:{port}/xiaozhi/v1/",
        "token": "",  # auth mode "none": clears a token stored from an earlier server
        "version": 1,
    }
    # Never a newer version: the device's own (from the body, or the User-Agent on GET).
    assert answer["firmware"] == {"version": "1.6.2", "url": ""}
    assert "mqtt" not in answer  # it would switch the firmware to MQTT
    assert "activation" not in answer  # it would block the device on an activation code


async def test_missing_or_blank_device_id_is_400(make_relay: RelayFactory) -> None:
    client = await make_relay()
    for headers in ({"Device-Id": ""}, {"Device-Id": "   "}):
        answer = await ota(client, headers=headers, status=400)
        assert answer["errorType"] == "no_device_id"
    resp = await client.post("/v1/ota/", data=orjson.dumps(SYSTEM_INFO))
    assert resp.status == 400
    assert (await resp.json())["errorType"] == "no_device_id"


@pytest.mark.parametrize(
    "body", [b'{"application":', b"\xff\xfe", b"[1,2]", b'"text"', b"\r", b" \n"]
)
async def test_malformed_body_is_400(make_relay: RelayFactory, body: bytes) -> None:
    client = await make_relay()
    answer = await ota(client, body=body, status=400)
    assert answer["errorType"] == "bad_json"


async def test_empty_post_body_is_accepted_and_oversized_is_413(make_relay: RelayFactory) -> None:
    client = await make_relay()
    answer = await ota(client, body=b"")
    assert answer["firmware"]["version"] == "1.6.2"  # from the User-Agent
    huge = orjson.dumps({**SYSTEM_INFO, "pad": "x" * 70_000})
    assert (await ota(client, body=huge, status=413))["errorType"] == "too_large"


async def test_hmac_token_is_accepted_by_the_relays_own_handshake(
    make_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_relay(
        auth={"mode": "hmac", "hmac_secret": SECRET}, ota={"protocol_version": 3}
    )
    before = time.time()
    ws = (await ota(client))["websocket"]
    token = ws["token"]
    assert verify(SECRET, token, CLIENT_ID, MAC, time.time(), 60)
    assert int(token.rpartition(".")[2]) >= int(before)
    # The firmware's next step: connect where it was told, with what it stored.
    headers = {
        "Authorization": f"Bearer {token}",  # the firmware adds "Bearer " (no space in it)
        "Protocol-Version": str(ws["version"]),
        "Device-Id": MAC,
        "Client-Id": CLIENT_ID,
    }
    conn = await client.ws_connect(URL(ws["url"]).path, headers=headers)
    dev = Device(conn, ws["version"])
    await dev.send({"type": "hello", "version": 3, "transport": "websocket"})
    reply = await dev.recv()
    assert reply["type"] == "hello"
    assert reply["transport"] == "websocket"
    await conn.close()
    # The token is bound to the ids: another board's Client-Id is refused.
    resp = await client.get(
        URL(ws["url"]).path,
        headers={**headers, "Client-Id": "other", "Connection": "Upgrade", "Upgrade": "websocket"},
    )
    assert resp.status == 401
    assert token not in caplog.text


async def test_configured_websocket_url_is_returned_verbatim(make_relay: RelayFactory) -> None:
    url = "wss://relay.example:8443/v1/ws/"
    client = await make_relay(ota={"websocket_url": url})
    answer = await ota(client, headers={"Host": "elsewhere:1"})
    assert answer["websocket"]["url"] == url


async def test_derived_url_follows_host_and_forwarded_headers_only_when_trusted(
    make_relay: RelayFactory,
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "relay.example, proxy2"}
    plain = await make_relay()
    answer = await ota(plain, headers={"Host": "10.0.0.7:8000", **forwarded})
    assert answer["websocket"]["url"] == "ws://10.0.0.7:8000/xiaozhi/v1/"
    trusting = await make_relay(ota={"trust_forwarded": True})
    answer = await ota(trusting, headers={"Host": "10.0.0.7:8000", **forwarded})
    assert answer["websocket"]["url"] == "wss://relay.example/xiaozhi/v1/"
    answer = await ota(trusting, headers={"Host": "[::1]:8000"})
    assert answer["websocket"]["url"] == "ws://[::1]:8000/xiaozhi/v1/"
    bad = await ota(trusting, headers={"X-Forwarded-Host": "evil/path?x"}, status=400)
    assert bad["errorType"] == "bad_host"


async def test_allowed_devices(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"allowed_devices": [CANONICAL, "kiosk-7"]})
    assert (await ota(client))["websocket"]["url"]
    refused = await ota(client, headers={"Device-Id": "66:9c:4b:da:13:eb"}, status=403)
    assert refused["errorType"] == "device_not_allowed"
    assert "allowed_devices" in refused["hint"]
    # Entries are compared in canonical form, however the MAC was written.
    client = await make_relay(auth={"allowed_devices": ["66-9C-4B-DA-13-EA"]})
    assert (await ota(client))["websocket"]["url"]


async def test_refused_device_gets_no_token(make_relay: RelayFactory) -> None:
    client = await make_relay(
        auth={"mode": "hmac", "hmac_secret": SECRET, "allowed_devices": ["kiosk-7"]}
    )
    refused = await ota(client, status=403)  # the helper asserts the error keys, and only them
    assert refused["errorType"] == "device_not_allowed"


async def test_firmware_block(make_relay: RelayFactory) -> None:
    image = "https://fw.example/xiaozhi-1.7.0.bin"
    client = await make_relay(ota={"firmware_version": "1.7.0", "firmware_url": image})
    assert (await ota(client))["firmware"] == {"version": "1.7.0", "url": image}
    # Not configured: the device's own version, or nothing when the firmware could not
    # parse it (it reads versions with stoi).
    client = await make_relay()
    info = {**SYSTEM_INFO, "application": {"version": "2.0.0"}}
    assert (await ota(client, body=info))["firmware"] == {"version": "2.0.0", "url": ""}
    odd = {**SYSTEM_INFO, "application": {"version": "v1.6-dirty"}}
    assert "firmware" not in await ota(client, body=odd)
    assert "firmware" not in await ota(client, body=None, headers={"User-Agent": "curl"})


async def test_server_time(make_relay: RelayFactory) -> None:
    client = await make_relay(ota={"timezone_offset_min": 480})
    answer = await ota(client)
    assert abs(answer["server_time"]["timestamp"] - time.time() * 1000) < 1000
    assert answer["server_time"]["timezone_offset"] == 480
    answer = await ota(await make_relay(), body=None)
    assert answer["server_time"]["timezone_offset"] == 0


async def test_static_token_only_when_handed_out(make_relay: RelayFactory) -> None:
    auth = {"mode": "tokens", "tokens": ["first-tok", "second-tok"]}
    client = await make_relay(auth=auth)
    # Left out, not "": the device keeps a token it was given some other way.
    assert "token" not in (await ota(client))["websocket"]
    client = await make_relay(auth=auth, ota={"hand_out_static_token": True})
    token = (await ota(client))["websocket"]["token"]
    assert token == "first-tok"
    dev = await Device.connect(client, device_id=MAC, headers={"Authorization": f"Bearer {token}"})
    assert dev.session_id


def test_redis_mode_hands_out_no_token() -> None:
    cfg = parse({"auth": {"mode": "redis"}, "redis": {"url": "redis://127.0.0.1:1/0"}})
    req = OtaRequest(MAC, CANONICAL, CLIENT_ID, "b/1.0", "1.0")
    assert websocket_token(cfg, req, time.time()) is None


async def test_disabled_is_404(make_relay: RelayFactory) -> None:
    client = await make_relay(ota={"enabled": False})
    assert (await ota(client, status=404))["errorType"] == "ota_disabled"


@pytest.mark.parametrize(
    ("ota_table", "key"),
    [
        ({"protocol_version": 4}, "ota.protocol_version"),
        ({"websocket_url": "http://relay/xiaozhi/v1/"}, "ota.websocket_url"),
        ({"timezone_offset_min": 900}, "ota.timezone_offset_min"),
        ({"firmware_version": "v1.7", "firmware_url": "https://x/f.bin"}, "ota.firmware_version"),
        ({"firmware_version": "1.7.0"}, "ota.firmware_url"),
        ({"surprise": 1}, "ota.surprise"),
    ],
)
def test_bad_ota_config_names_the_key(ota_table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse({"ota": ota_table})


def test_ota_defaults() -> None:
    cfg = Config().ota
    assert (cfg.enabled, cfg.websocket_url, cfg.protocol_version) == (True, "", 1)
    assert (cfg.trust_forwarded, cfg.hand_out_static_token, cfg.firmware_version) == (
        False,
        False,
        "",
    )


# ---- docs/devices.md -----------------------------------------------------------------------


def json_blocks() -> list[str]:
    """Every ```json block of the device guide."""
    return re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)


def test_every_json_example_in_the_device_guide_parses() -> None:
    blocks = json_blocks()
    assert len(blocks) >= 10
    for block in blocks:
        json.loads(block)  # raises, naming the position, on an invalid example


def test_device_guide_hmac_example_is_what_mint_computes() -> None:
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r'mint\(\s*"([^"]+)",\s*"([^"]+)",\s*"([^"]+)",\s*(\d+),?\s*\)\n# → (\S+)', text)
    assert m is not None, "the guide shows a mint(...) example and its result"
    secret, client_id, device_id, ts, token = m.groups()
    assert mint(secret, client_id, device_id, int(ts)) == token


async def test_device_guide_ota_answer_has_the_relays_shape(make_relay: RelayFactory) -> None:
    client = await make_relay(
        auth={"mode": "hmac", "hmac_secret": SECRET},
        ota={"firmware_version": "1.7.0", "firmware_url": "https://fw.example/f.bin"},
    )
    real = await ota(client)
    documented = [
        b for b in map(json.loads, json_blocks()) if isinstance(b, dict) and "server_time" in b
    ]
    assert documented
    for doc in documented:
        assert set(doc) == set(real)
        for key in real:
            assert set(doc[key]) == set(real[key]), key
