"""Browsers (docs/protocol.md §1.8): which origins may call the OTA check (`[ota]
cors_origins`), and may open the device WebSocket when `[server] check_origin` is on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relay import cli
from relay.config import Config, ConfigError, load, parse
from relay.cors import allow_origin, requested_headers

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
