"""Configuration: the shipped file, validation messages that name the key, env overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol.device import WAKE_WORDS
from relay.config.load import load, parse
from relay.config.schema import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.toml"


def business(**overrides: Any) -> dict[str, Any]:
    """A valid `[[business]]` table with `overrides` applied."""
    return {"name": "b", "url": "http://127.0.0.1:8090/chat", **overrides}


def test_shipped_config_loads_with_documented_keys() -> None:
    cfg = load(SHIPPED, env={})
    assert cfg.server.host == "0.0.0.0"
    assert cfg.server.port == 8000
    assert cfg.server.hello_timeout_s == 10.0
    assert cfg.server.idle_timeout_s == 180.0
    assert cfg.server.max_message_bytes == 65536
    assert cfg.auth.mode == "none"
    assert cfg.auth.tokens == ()
    assert len(cfg.business) == 1
    b = cfg.business[0]
    assert b.name == "reference"
    assert b.url == "http://127.0.0.1:8090/chat"
    assert b.token == ""
    assert b.session_check == "strict"
    assert b.connect_timeout_s == 3.0
    assert b.first_event_timeout_s == 15.0
    assert b.idle_timeout_s == 30.0
    assert cfg.tts.provider == "embedded"
    assert (cfg.asr.provider, cfg.asr.language, cfg.asr.fallback) == ("embedded", "auto", "")
    assert cfg.tts.downlink_sample_rate == 24000
    assert cfg.tts.frame_duration_ms == 60
    assert cfg.api.tokens == ()
    assert cfg.redis.url == ""
    # The business target the bridge uses carries the same values.
    target = b.target()
    assert (target.name, target.url, target.first_event_timeout_s) == (
        "reference",
        "http://127.0.0.1:8090/chat",
        15.0,
    )


def test_no_file_means_defaults() -> None:
    cfg = load(None, env={})
    assert cfg == Config()
    assert cfg.business == ()


def test_values_are_frozen() -> None:
    cfg = load(SHIPPED, env={})
    with pytest.raises(AttributeError):
        cfg.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": "8000"}}, "server.port"),
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"hello_timeout_s": 0}}, "server.hello_timeout_s"),
        ({"server": {"hello_timeout_s": "10"}}, "server.hello_timeout_s"),
        ({"server": {"prot": 8000}}, "server.prot"),
        ({"server": []}, "server"),
        ({"serve": {}}, "serve"),
        ({"auth": {"mode": "password"}}, "auth.mode"),
        ({"auth": {"mode": "tokens"}}, "auth.tokens"),
        ({"auth": {"mode": "tokens", "tokens": []}}, "auth.tokens"),
        ({"auth": {"tokens": [1]}}, "auth.tokens[0]"),
        ({"business": [business(url="ftp://x/")]}, "business[0].url"),
        ({"business": [business(), business(name="c", url="x")]}, "business[1].url"),
        ({"business": [{"url": "http://x/"}]}, "business[0].name"),
        ({"business": [{"name": "b"}]}, "business[0].url"),
        ({"business": [business(), business()]}, "business"),
        ({"business": [business(session_check="loose")]}, "business[0].session_check"),
        ({"business": [business(idle_timeout_s=-1)]}, "business[0].idle_timeout_s"),
        ({"business": [business(tokn="x")]}, "business[0].tokn"),
        ({"business": business()}, "business"),
        ({"tts": {"provider": "cloud"}}, "tts.provider"),
        ({"api": {"tokens": 5}}, "api.tokens"),
        ({"redis": {"url": 6379}}, "redis.url"),
        ({"redis": {"mode": "shards"}}, "redis.mode"),
        ({"redis": {"mode": "cluster"}}, "redis.mode"),
        ({"redis": {"url": "redis://a:1,redis://b:1"}}, "redis.url"),
        ({"redis": {"mode": "cluster", "url": "redis://a:1,unix:///r.sock"}}, "redis.url"),
        ({"redis": {"mode": "sentinel", "url": "redis://s:26379"}}, "redis.master_name"),
        ({"log": {"level": "LOUD"}}, "log.level"),
        ({"vad": {"batch_window_ms": 500}}, "vad.batch_window_ms"),
        ({"vad": {"batch_window_ms": -1}}, "vad.batch_window_ms"),
        ({"vad": {"early_silence_s": 0.6}}, "vad.early_silence_s"),
        ({"vad": {"early_silence_s": -0.1}}, "vad.early_silence_s"),
        ({"listen": {"wake_words": ["你好小智", 7]}}, "listen.wake_words[1]"),
        ({"listen": {"wake_words": [["hi"]]}}, "listen.wake_words[0]"),
        ({"listen": {"wake_words": ["ok", " ?! "]}}, "listen.wake_words[1]"),
        ({"listen": {"wake_word_chat": "yes"}}, "listen.wake_word_chat"),
        ({"listen": {"max_text_chars": 0}}, "listen.max_text_chars"),
        ({"tts": {"stop_margin_ms": 2001}}, "tts.stop_margin_ms"),
        ({"tts": {"stop_margin_ms": -1}}, "tts.stop_margin_ms"),
        ({"listen": {"wake_word": []}}, "listen.wake_word"),
        ({"mcp": {"timeout_s": 0}}, "mcp.timeout_s"),
        ({"mcp": {"timeout_s": 301}}, "mcp.timeout_s"),
        ({"mcp": {"max_tools": 0}}, "mcp.max_tools"),
        ({"mcp": {"max_list_bytes": 1023}}, "mcp.max_list_bytes"),
        ({"mcp": {"max_calls_per_turn": 0}}, "mcp.max_calls_per_turn"),
        ({"mcp": {"vision": {"url": "ws://cam.example/"}}}, "mcp.vision.url"),
        ({"business": [business(device_tools="yes")]}, "business[0].device_tools"),
        ({"asr": {"language": "fr"}}, "asr.language"),
        ({"asr": {"language": "zh-CN"}}, "asr.language"),
        ({"asr": {"provider": "whisper"}}, "asr.provider"),
        ({"asr": {"fallback": "openai"}}, "asr.fallback"),
        ({"asr": {"provider": "aliyun", "aliyun": {"appkey": "k"}}}, "asr.aliyun.appkey"),
        ({"tts": {"provider": "aliyun", "aliyun": {"access_key_id": "i"}}}, "tts.aliyun.appkey"),
        ({"asr": {"provider": "dashscope"}}, "asr.dashscope.api_key"),
        ({"tts": {"provider": "dashscope"}}, "tts.dashscope.api_key"),
        ({"tts": {"dashscope": {"volume": 101}}}, "tts.dashscope.volume"),
    ],
)
def test_bad_value_names_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith(key + ":") or message.startswith(key + " "), message


def test_duplicate_business_names_are_named() -> None:
    with pytest.raises(ConfigError, match="unique"):
        parse({"business": [business(), business(url="http://other/")]})


def test_port_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^server\.port"):
        parse({"server": {"port": 70000}})


@pytest.mark.parametrize(
    ("tts", "key"),
    [
        ({"downlink_sample_rate": 44100}, "tts.downlink_sample_rate"),
        ({"frame_duration_ms": 7}, "tts.frame_duration_ms"),
    ],
)
def test_downlink_audio_the_relay_cannot_encode_names_the_key(
    tts: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"tts": tts})
    assert str(info.value).startswith(key)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 8000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load(path, env={})
    assert str(path) in str(info.value)


def test_file_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = "eighty"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^server\.port:"):
        load(path, env={})


def test_env_overrides_apply() -> None:
    env = {
        "RELAY__SERVER__PORT": "9001",
        "RELAY__API__TOKENS": "a,b",
        "RELAY__BUSINESS__0__URL": "http://x/",
        "RELAY__AUTH__MODE": "tokens",
        "RELAY__AUTH__TOKENS": "t1",
        "RELAY__SERVER__HELLO_TIMEOUT_S": "2.5",
        "RELAY__REDIS__URL": "redis://127.0.0.1:6379/0",
        "OTHER__SERVER__PORT": "1",  # not ours
    }
    cfg = load(SHIPPED, env=env)
    assert cfg.server.port == 9001
    assert cfg.api.tokens == ("a", "b")
    assert cfg.business[0].url == "http://x/"
    assert cfg.business[0].name == "reference"  # the rest of the table is kept
    assert cfg.auth.mode == "tokens"
    assert cfg.auth.tokens == ("t1",)
    assert cfg.server.hello_timeout_s == 2.5
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    assert cfg.server.host == "0.0.0.0"  # untouched keys keep the file's values


@pytest.mark.parametrize("value", ["0", "0.0", "0.3"])
def test_early_recognition_can_be_turned_off_or_tuned(value: str) -> None:
    cfg = load(SHIPPED, env={"RELAY__VAD__EARLY_SILENCE_S": value})
    assert cfg.vad.early_silence_s == float(value)
    assert load(SHIPPED, env={}).vad.early_silence_s == 0.2  # on as shipped


@pytest.mark.parametrize(("value", "expected"), [("-300", -300), ("480", 480), ("0", 0)])
def test_env_override_of_a_signed_integer(value: str, expected: int) -> None:
    # A key that may be negative (the OTA answer's time zone, west of UTC) takes a negative
    # number from the environment as it does from the file.
    cfg = load(SHIPPED, env={"RELAY__OTA__TIMEZONE_OFFSET_MIN": value})
    assert cfg.ota.timezone_offset_min == expected


def test_env_can_add_a_business_without_a_file() -> None:
    cfg = load(None, env={"RELAY__BUSINESS__0__NAME": "b", "RELAY__BUSINESS__0__URL": "http://b/"})
    assert [(b.name, b.url) for b in cfg.business] == [("b", "http://b/")]


def test_env_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY__SERVER__PORT", "9002")
    assert load(SHIPPED).server.port == 9002


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RELAY__SERVER__PORT": "abc"}, "server.port"),
        ({"RELAY__SERVER__PORT": "-5"}, "server.port"),
        ({"RELAY__AUTH__MODE": "open"}, "auth.mode"),
        ({"RELAY__BUSINESS__0__URL": "localhost:8090"}, "business[0].url"),
        ({"RELAY__BUSINESS__1__URL": "http://b2/"}, "business[1].name"),
        ({"RELAY__SERVER__PROT": "1"}, "server.prot"),
    ],
)
def test_bad_env_value_names_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(SHIPPED, env=env)
    assert str(info.value).startswith(key + ":"), str(info.value)


def test_shipped_wake_words_are_the_stock_ones() -> None:
    # config.toml spells out the default list, so that an operator can add to it.
    assert load(SHIPPED, env={}).listen.wake_words == WAKE_WORDS


def test_wake_words_from_file_and_environment() -> None:
    cfg = load(SHIPPED, env={"RELAY__LISTEN__WAKE_WORDS": "Hey Robot, 你好小智"})
    assert cfg.listen.wake_words == ("Hey Robot", "你好小智")
    assert cfg.listen.rules().is_wake_word("hey robot!")
    assert not load(SHIPPED, env={}).listen.wake_word_chat


def test_env_path_that_is_not_a_key() -> None:
    with pytest.raises(ConfigError, match="RELAY__BUSINESS__URL"):
        load(SHIPPED, env={"RELAY__BUSINESS__URL": "http://x/"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RELAY__BUSINESS__0__TOKEN": "123456"}, "123456"),
        ({"RELAY__BUSINESS__0__TOKEN": "true"}, "true"),
    ],
)
def test_env_string_values_stay_strings(env: dict[str, str], expected: str) -> None:
    assert load(SHIPPED, env=env).business[0].token == expected


def test_env_single_numeric_token_list() -> None:
    assert load(SHIPPED, env={"RELAY__API__TOKENS": "4242"}).api.tokens == ("4242",)


@pytest.mark.parametrize("key", ["max_late_ms", "batch_window_ms"])
def test_vad_keys_documented_with_a_zero_take_zero(key: str) -> None:
    # config.toml: max_late_ms 0 keeps all audio; batch_window_ms 0 sends audio at once.
    assert getattr(parse({"vad": {key: 0}}).vad, key) == 0
    with pytest.raises(ConfigError, match=f"vad.{key}"):
        parse({"vad": {key: -1}})


def test_redis_modes_take_their_lists() -> None:
    cfg = parse({"redis": {"mode": "cluster", "url": "redis://a:7000, rediss://b:7001"}})
    assert (cfg.redis.mode, cfg.redis.master_name) == ("cluster", "")
    cfg = parse(
        {"redis": {"mode": "sentinel", "url": "redis://s1:26379", "master_name": "mymaster"}}
    )
    assert (cfg.redis.mode, cfg.redis.master_name) == ("sentinel", "mymaster")
    assert parse({}).redis.mode == "single"
