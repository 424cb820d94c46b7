"""Browsers (docs/protocol.md §1.8): which origins may call the OTA check (`[ota]
cors_origins`), and may open the device WebSocket when `[server] check_origin` is on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from relay.config.load import load, parse
from relay.config.schema import Config, ConfigError
from relay.cors import allow_origin, requested_headers
from relay.run import cli
from tests.relay.chromium import chromium, needs_chromium
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device
from tests.relay.test_api import scrape, value

ROOT = Path(__file__).resolve().parents[2]
PAGE = "http://page.example:8080"  # the web page's origin in these tests

# ---- configuration --------------------------------------------------------------------------


def test_defaults_allow_any_page_and_do_not_check_the_websocket() -> None:
    for cfg in (Config(), load(ROOT / "config.toml", env={})):
        assert cfg.ota.cors_origins == ("*",)
        assert cfg.server.check_origin is False


def test_valid_origins_are_accepted() -> None:
    origins = ["https://app.example", PAGE, "http://127.0.0.1:5173", "http://[::1]:3000", "*"]
    assert parse({"ota": {"cors_origins": origins}}).ota.cors_origins == tuple(origins)
    assert parse({"ota": {"cors_origins": []}}).ota.cors_origins == ()  # no page at all


@pytest.mark.parametrize(
    ("origins", "key", "words"),
    [
        (["https://ok.example", "https://app.example/"], "ota.cors_origins[1]", "trailing slash"),
        (["https://app.example/ota"], "ota.cors_origins[0]", "path"),
        (["https://app.example?x=1"], "ota.cors_origins[0]", "query"),
        (["ftp://app.example"], "ota.cors_origins[0]", "http"),
        (["app.example"], "ota.cors_origins[0]", "http"),
        (["*", ""], "ota.cors_origins[1]", "empty"),
        (["https://app.example:70000"], "ota.cors_origins[0]", "scheme://host[:port]"),
        (["https://user@app.example"], "ota.cors_origins[0]", "scheme://host[:port]"),
        (["https://ok.example", 8080], "ota.cors_origins[1]", "expected a string"),
        ("https://app.example/", "ota.cors_origins[0]", "trailing slash"),  # one string
        (5, "ota.cors_origins", "expected a list"),
    ],
)
def test_a_bad_origin_names_the_key(origins: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"ota": {"cors_origins": origins}})
    assert str(info.value).startswith(f"{key}: "), info.value
    assert words in str(info.value)


def test_check_origin_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"^server\.check_origin: "):
        parse({"server": {"check_origin": "yes"}})


def test_environment_overrides() -> None:
    env = {
        "RELAY__OTA__CORS_ORIGINS": f"https://app.example, {PAGE}",
        "RELAY__SERVER__CHECK_ORIGIN": "true",
    }
    cfg = load(ROOT / "config.toml", env=env)
    assert cfg.ota.cors_origins == ("https://app.example", PAGE)
    assert cfg.server.check_origin is True
    with pytest.raises(ConfigError, match=r"^ota\.cors_origins\[1\]: "):
        load(None, env={"RELAY__OTA__CORS_ORIGINS": "https://app.example,https://x.example/"})


def test_check_config_reports_the_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("RELAY__")]:
        monkeypatch.delenv(name)
    path = tmp_path / "relay.toml"
    path.write_text('[ota]\ncors_origins = ["*", "https://app.example/"]\n', encoding="utf-8")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ota.cors_origins[1]: "), err


# ---- origin matching --------------------------------------------------------------------


def test_origins_compare_as_browsers_serialise_them() -> None:
    origins = ["https://App.Example:443", "http://127.0.0.1:5173"]
    assert allow_origin(origins, "https://app.example") == "https://app.example"
    assert allow_origin(origins, "http://127.0.0.1:5173") == "http://127.0.0.1:5173"
    for other in ("http://app.example", "https://app.example:8443", "http://127.0.0.1", "null"):
        assert allow_origin(origins, other) is None, other
    assert allow_origin(["*"], "null") == "*"
    assert allow_origin([], "https://app.example") is None


def test_requested_headers_are_reflected_only_when_plain_names() -> None:
    assert requested_headers("client-id,content-type,device-id") == (
        "client-id, content-type, device-id"
    )
    assert requested_headers("") == ""
    for bad in ("device-id, x y", "a,,b", "a;b", "a\x01", "a," * 600 + "a"):
        assert requested_headers(bad) is None, bad


# ---- the OTA check from a web page ----------------------------------------------------------

OTA_PATHS = ["/xiaozhi/ota/", "/xiaozhi/ota", "/v1/ota/", "/v1/ota"]
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "client-id,content-type,device-id",  # as Chromium sends
}
DEVICE = {"Device-Id": "66:9c:4b:da:13:ea", "Client-Id": "c-1"}


def cors_headers(resp: ClientResponse) -> dict[str, str]:
    """The answer's CORS headers (and Vary)."""
    return {k: v for k, v in resp.headers.items() if k.startswith("Access-Control-") or k == "Vary"}


@pytest.mark.parametrize("path", OTA_PATHS)
async def test_preflight_from_any_page_by_default(make_relay: RelayFactory, path: str) -> None:
    client = await make_relay()
    resp = await client.options(path, headers=PREFLIGHT)
    assert resp.status == 204, await resp.text()
    assert cors_headers(resp) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "client-id, content-type, device-id",
        "Access-Control-Max-Age": "600",
    }


async def test_preflight_from_a_listed_page(make_relay: RelayFactory) -> None:
    client = await make_relay(ota={"cors_origins": ["https://other.example", PAGE]})
    resp = await client.options("/xiaozhi/ota/", headers=PREFLIGHT)
    assert resp.status == 204, await resp.text()
    headers = cors_headers(resp)
    assert headers["Access-Control-Allow-Origin"] == PAGE  # the page's own, never "*"
    assert headers["Vary"] == "Origin"  # a cache must not hand it to another page
    assert headers["Access-Control-Allow-Headers"] == "client-id, content-type, device-id"
    # Without requested headers, none are allowed beyond the safelisted ones.
    resp = await client.options("/v1/ota/", headers={"Origin": PAGE})
    assert resp.status == 204
    assert "Access-Control-Allow-Headers" not in resp.headers


async def test_preflight_from_another_page_is_403(make_relay: RelayFactory) -> None:
    client = await make_relay(ota={"cors_origins": [PAGE]})
    for origin in ("http://page.example:8081", "https://page.example:8080", "null"):
        resp = await client.options("/xiaozhi/ota/", headers={**PREFLIGHT, "Origin": origin})
        assert resp.status == 403, origin
        body = await resp.json()
        assert set(body) == {"error", "errorType", "hint"}
        assert body["errorType"] == "bad_origin"
        assert "[ota] cors_origins" in body["hint"]
        assert cors_headers(resp) == {"Vary": "Origin"}
    nobody = await make_relay(ota={"cors_origins": []})  # no page at all
    assert (await nobody.options("/xiaozhi/ota/", headers=PREFLIGHT)).status == 403


async def test_preflight_with_odd_requested_headers_is_400(make_relay: RelayFactory) -> None:
    client = await make_relay()
    for names in ("device-id, x y", "device-id;evil", "x," * 600 + "x"):
        headers = {**PREFLIGHT, "Access-Control-Request-Headers": names}
        resp = await client.options("/xiaozhi/ota/", headers=headers)
        assert resp.status == 400, names
        assert (await resp.json())["errorType"] == "bad_request"
        assert "Access-Control-Allow-Headers" not in resp.headers
    resp = await client.options("/xiaozhi/ota/", headers={"Access-Control-Request-Headers": "a b"})
    assert resp.status == 400  # odd whether or not it is a preflight


async def test_options_without_origin_and_with_ota_disabled(make_relay: RelayFactory) -> None:
    client = await make_relay()
    resp = await client.options("/xiaozhi/ota/")  # not a preflight: a plain OPTIONS
    assert resp.status == 204
    assert resp.headers["Allow"] == "GET, POST, OPTIONS"
    assert cors_headers(resp) == {}
    off = await make_relay(ota={"enabled": False})
    resp = await off.options("/xiaozhi/ota/", headers=PREFLIGHT)
    assert resp.status == 404
    assert (await resp.json())["errorType"] == "ota_disabled"


async def ota_answers(client: TestClient[Any, Any], origin: str | None) -> list[ClientResponse]:
    """One answer of each kind: 200 (POST and GET), 400, 403, 413."""
    h = {"Origin": origin} if origin else {}
    answers = [
        await client.post("/xiaozhi/ota/", headers={**DEVICE, **h}, json={}),
        await client.get("/v1/ota", headers={**DEVICE, **h}),
        await client.post("/xiaozhi/ota/", headers=h, json={}),
        await client.post("/xiaozhi/ota/", headers={**h, "Device-Id": "aa:bb:cc:dd:ee:ff"}),
        await client.post("/v1/ota/", headers={**DEVICE, **h}, data=b" " * (65 * 1024)),
    ]
    assert [r.status for r in answers] == [200, 200, 400, 403, 413]
    return answers


@pytest.mark.parametrize(
    ("origins", "allow", "vary"),
    [(["*"], "*", None), ([PAGE, "https://b.example"], PAGE, "Origin")],
)
async def test_answers_and_errors_carry_the_allowed_origin(
    make_relay: RelayFactory, origins: list[str], allow: str, vary: str | None
) -> None:
    client = await make_relay(
        ota={"cors_origins": origins}, auth={"allowed_devices": ["66:9c:4b:da:13:ea"]}
    )
    for resp in await ota_answers(client, PAGE):
        assert resp.headers.get("Access-Control-Allow-Origin") == allow, resp.status
        assert resp.headers.get("Vary") == vary, resp.status
    off = await make_relay(ota={"enabled": False, "cors_origins": origins})
    resp = await off.post("/xiaozhi/ota/", headers={**DEVICE, "Origin": PAGE}, json={})
    assert resp.status == 404
    assert resp.headers.get("Access-Control-Allow-Origin") == allow


async def test_answers_to_another_page_carry_no_allowed_origin(make_relay: RelayFactory) -> None:
    client = await make_relay(
        ota={"cors_origins": ["https://b.example"]}, auth={"allowed_devices": ["669C4BDA13EA"]}
    )
    for resp in await ota_answers(client, PAGE):  # answered; the browser hides them from the page
        assert cors_headers(resp) == {"Vary": "Origin"}, resp.status


@pytest.mark.parametrize("origins", [["*"], [PAGE]])
async def test_answers_without_origin_are_unchanged(
    make_relay: RelayFactory, origins: list[str]
) -> None:
    client = await make_relay(
        ota={"cors_origins": origins}, auth={"allowed_devices": ["669C4BDA13EA"]}
    )
    answers = await ota_answers(client, None)  # the firmware sends no Origin
    for resp in answers:
        assert cors_headers(resp) == {}, resp.status
    assert answers[0].headers["Cache-Control"] == "no-store"
    assert (await answers[0].json())["websocket"]["url"].endswith("/xiaozhi/v1/")


# ---- the device WebSocket and check_origin ----------------------------------------------------

UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Device-Id": "66:9c:4b:da:13:ea",
}


@pytest.mark.parametrize("path", ["/xiaozhi/v1/", "/v1/ws/"])
async def test_check_origin_refuses_a_foreign_page(make_relay: RelayFactory, path: str) -> None:
    client = await make_relay(server={"check_origin": True}, ota={"cors_origins": [PAGE]})
    resp = await client.get(path, headers={**UPGRADE, "Origin": "https://evil.example"})
    assert resp.status == 403  # before the upgrade
    body = await resp.json()
    assert set(body) == {"error", "errorType", "hint"}
    assert body["errorType"] == "bad_origin"
    assert "[ota] cors_origins" in body["hint"]
    samples = await scrape(client)
    assert value(samples, "relay_handshake_rejected_total", reason="bad_origin") == 1.0
    # The listed page, and a device (no Origin), connect.
    page = await Device.connect(client, path=path, headers={"Origin": PAGE})
    device = await Device.connect(client, path=path, device_id="AA:BB:CC:DD:EE:FF")
    assert page.session_id != device.session_id


async def test_without_check_origin_any_page_connects(make_relay: RelayFactory) -> None:
    client = await make_relay(ota={"cors_origins": [PAGE]})
    dev = await Device.connect(client, headers={"Origin": "https://evil.example"})
    assert dev.hello["type"] == "hello"
    samples = await scrape(client)
    assert value(samples, "relay_handshake_rejected_total", reason="bad_origin") == 0.0


# ---- end to end: a page on another origin, in headless Chromium ----------------------------

PAGE_HTML = """<!doctype html><title>another origin</title>
<script>
// What the xiaozhi-server web client does first: POST to the OTA URL with the device's ids.
async function otaCheck(url) {
  try {
    const resp = await fetch(url, {
      method: "POST",
      headers: {"Device-Id": "66:9c:4b:da:13:ea", "Client-Id": "c-1",
                "Content-Type": "application/json"},
      body: "{}",
    });
    return {status: resp.status, url: (await resp.json()).websocket.url};
  } catch (exc) {
    return {error: exc.name};  // CORS refusals reach the page as a bare TypeError
  }
}
</script>"""


@needs_chromium
async def test_a_page_on_another_origin_calls_the_ota_check(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE_HTML, content_type="text/html")

    site = web.Application()
    site.router.add_get("/", index)
    page_server: TestServer = await aiohttp_server(site)
    page_origin = str(page_server.make_url("")).rstrip("/")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_origin + "/")
        for origins, expected in [
            (None, "ok"),  # the default: any page
            ([page_origin], "ok"),
            (["http://elsewhere.example"], "TypeError"),
        ]:
            client = await make_relay(ota={"cors_origins": origins} if origins else {})
            relay_ota = str(client.make_url("/xiaozhi/ota/"))
            assert relay_ota.split("/")[2] != page_origin.split("/")[2]  # another port
            got = await page.evaluate("url => otaCheck(url)", relay_ota)
            if expected == "ok":
                ws_url = f"ws://127.0.0.1:{client.server.port}/xiaozhi/v1/"
                assert got == {"status": 200, "url": ws_url}, origins
            else:
                assert got == {"error": "TypeError"}, origins
