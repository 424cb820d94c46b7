"""Configuration: a TOML file plus `RELAY__SECTION__KEY` environment overrides, parsed once
into the frozen objects of relay/config/schema.py. A bad value fails at start with a message
naming the key."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from protocol.audio_format import OPUS_FRAME_MS, OPUS_SAMPLE_RATES
from protocol.device import phrase_key
from relay.config.schema import (
    Config,
    ConfigError,
    Secret,
    SignedInt,
    Token,
    ZeroOk,
)
from relay.cors import origin_problem

ENV_PREFIX = "RELAY__"
# Set by `relay serve --workers N` for each worker process: its index (relay/run/workers.py).
WORKER_ENV = "RELAY_WORKER_INDEX"
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")  # what a bearer token may hold (a header value)


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None = built-in defaults), apply environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _apply_env(data, os.environ if env is None else env)
    return parse(data)


def parse(data: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document into a `Config`."""
    cfg = _build(Config, data, "")
    _check_business_and_server(cfg)
    _check_speech_out(cfg)
    _check_speech_in(cfg)
    _check_aliyun(cfg)
    _check_auth_and_redis(cfg)
    _check_ota(cfg)
    _check_mcp(cfg)
    return cfg


def _check_business_and_server(cfg: Config) -> None:
    names = [b.name for b in cfg.business]
    if len(set(names)) != len(names):
        raise ConfigError("business: names must be unique")
    for i, b in enumerate(cfg.business):
        if not b.url.startswith(("http://", "https://")):
            raise ConfigError(f"business[{i}].url: must be an http:// or https:// URL")
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    _check_metrics(cfg)


def _check_metrics(cfg: Config) -> None:
    port = cfg.metrics.port
    if port > 65535:
        raise ConfigError("metrics.port: must be between 0 (none) and 65535")
    if port and port == cfg.server.port and cfg.metrics.host in ("", cfg.server.host):
        raise ConfigError("metrics.port: must not be [server] port")


def _check_speech_out(cfg: Config) -> None:
    if cfg.tts.downlink_sample_rate not in OPUS_SAMPLE_RATES:
        rates = ", ".join(map(str, OPUS_SAMPLE_RATES))
        raise ConfigError(f"tts.downlink_sample_rate: Opus encodes only {rates} Hz")
    if cfg.tts.frame_duration_ms not in OPUS_FRAME_MS:
        lengths = ", ".join(map(str, OPUS_FRAME_MS))
        raise ConfigError(f"tts.frame_duration_ms: Opus frames are {lengths} ms")
    if cfg.tts.pool_size < 1 or cfg.tts.threads < 1:
        raise ConfigError("tts.pool_size: pool_size and threads must be at least 1")
    if cfg.tts.stop_margin_ms > 2000:
        raise ConfigError("tts.stop_margin_ms: at most 2000 (the device waits for tts stop)")
    if cfg.tts.provider == "openai" and not cfg.tts.openai.base_url:
        raise ConfigError('tts.openai.base_url: required when tts.provider = "openai"')
    if cfg.tts.provider == "huoshan" and not (cfg.tts.huoshan.appid and cfg.tts.huoshan.token):
        raise ConfigError('tts.huoshan.appid: appid and token required for provider "huoshan"')
    tencent = cfg.tts.tencent
    if cfg.tts.provider == "tencent" and not (tencent.secret_id and tencent.secret_key):
        raise ConfigError('tts.tencent.secret_id: secret_id and secret_key required for "tencent"')

    if cfg.tts.provider == "dashscope" and not cfg.tts.dashscope.api_key:
        raise ConfigError('tts.dashscope.api_key: required when tts.provider = "dashscope"')
    if not 0 <= cfg.tts.dashscope.volume <= 100:
        raise ConfigError("tts.dashscope.volume: must be between 0 and 100")


def _check_aliyun(cfg: Config) -> None:
    """Aliyun NLS picked as the default needs its appkey and AccessKey."""
    for kind, picked, nls in (
        ("asr", cfg.asr.provider, cfg.asr.aliyun),
        ("tts", cfg.tts.provider, cfg.tts.aliyun),
    ):
        if picked == "aliyun" and not (nls.appkey and nls.access_key_id and nls.access_key_secret):
            keys = "appkey, access_key_id and access_key_secret"
            raise ConfigError(f'{kind}.aliyun.appkey: {keys} required for provider "aliyun"')


EMBEDDED_LANGUAGES = ("", "auto", "zh", "en")


def _check_speech_in(cfg: Config) -> None:
    if cfg.asr.provider == "embedded" and cfg.asr.language not in EMBEDDED_LANGUAGES:
        raise ConfigError(
            f'asr.language: the embedded recogniser takes "auto", "zh" or "en", '
            f"got {cfg.asr.language!r}"
        )
    if cfg.asr.provider == "openai" and not cfg.asr.openai.base_url:
        raise ConfigError('asr.openai.base_url: required when asr.provider = "openai"')
    if cfg.asr.provider == "volcengine" and not (
        cfg.asr.volcengine.appid and cfg.asr.volcengine.token
    ):
        raise ConfigError('asr.volcengine.appid: appid and token required for "volcengine"')
    _check_tencent_asr(cfg)
    if cfg.asr.provider == "dashscope" and not cfg.asr.dashscope.api_key:
        raise ConfigError('asr.dashscope.api_key: required when asr.provider = "dashscope"')
    _check_vad_and_listen(cfg)


def _check_vad_and_listen(cfg: Config) -> None:
    if not 0 < cfg.vad.threshold <= 1:
        raise ConfigError("vad.threshold: must be in (0, 1]")
    if cfg.vad.max_utterance_s <= cfg.vad.min_speech_s:
        raise ConfigError("vad.max_utterance_s: must exceed vad.min_speech_s")
    if cfg.vad.early_silence_s >= cfg.vad.min_silence_s:
        raise ConfigError(
            "vad.early_silence_s: must be below vad.min_silence_s (0 turns early recognition off)"
        )
    if not 0 <= cfg.vad.batch_window_ms <= 50:
        raise ConfigError("vad.batch_window_ms: must be between 0 and 50 (it adds to every lag)")
    if cfg.vad.max_late_ms < 0:
        raise ConfigError("vad.max_late_ms: must not be negative (0 keeps all audio)")
    for i, word in enumerate(cfg.listen.wake_words):
        if not phrase_key(word):
            raise ConfigError(f"listen.wake_words[{i}]: a wake word needs letters or digits")
    if cfg.listen.max_text_chars < 1:
        raise ConfigError("listen.max_text_chars: must be at least 1")


def _check_tencent_asr(cfg: Config) -> None:
    t = cfg.asr.tencent
    if cfg.asr.provider == "tencent" and not (t.appid and t.secret_id and t.secret_key):
        raise ConfigError("asr.tencent.appid: appid, secret_id and secret_key are required")
    if t.appid and not (t.appid.isascii() and t.appid.isdigit()):
        raise ConfigError("asr.tencent.appid: Tencent's AppID is a number (API key page)")
    if not t.engine_model_type.startswith("16k_"):
        raise ConfigError(
            "asr.tencent.engine_model_type: the relay sends 16 kHz audio, so a 16k_ engine "
            "(16k_zh, 16k_zh_large, 16k_en, ...)"
        )


def _check_mcp(cfg: Config) -> None:
    m = cfg.mcp
    if not 0 < m.timeout_s <= 300:
        raise ConfigError("mcp.timeout_s: must be above 0 and at most 300")
    if m.max_tools < 1:
        raise ConfigError("mcp.max_tools: must be at least 1")
    if m.max_list_bytes < 1024:
        raise ConfigError("mcp.max_list_bytes: must be at least 1024")
    if m.max_calls_per_turn < 1:
        raise ConfigError("mcp.max_calls_per_turn: must be at least 1")
    if m.vision.url and not m.vision.url.startswith(("http://", "https://")):
        raise ConfigError(
            "mcp.vision.url: must be an http:// or https:// URL (the device posts to it)"
        )


def _check_auth_and_redis(cfg: Config) -> None:
    if cfg.auth.mode == "hmac" and not cfg.auth.hmac_secret:
        raise ConfigError('auth.hmac_secret: mode "hmac" needs a secret')
    if cfg.auth.mode == "redis" and not cfg.redis.url:
        raise ConfigError('auth.mode: "redis" needs [redis] url')
    _check_redis_mode(cfg)
    if cfg.redis.heartbeat_s >= cfg.redis.presence_ttl_s:
        raise ConfigError("redis.heartbeat_s: must be shorter than redis.presence_ttl_s")
    if cfg.auth.mode == "tokens" and not cfg.auth.tokens:
        raise ConfigError('auth.tokens: mode "tokens" needs at least one token')


def _check_redis_mode(cfg: Config) -> None:
    """`url` is one URL in single mode, a comma list of seed nodes or sentinels otherwise."""
    redis = cfg.redis
    urls = [u.strip() for u in redis.url.split(",")] if redis.url else []
    if redis.mode == "single" and len(urls) > 1:
        raise ConfigError('redis.url: one URL in mode "single" (a list needs "cluster"/"sentinel")')
    if redis.mode != "single" and not urls:
        raise ConfigError(f'redis.mode: "{redis.mode}" needs [redis] url (a comma list)')
    schemes = ("redis://", "rediss://") + (("unix://",) if redis.mode == "single" else ())
    if not all(u.startswith(schemes) for u in urls):
        raise ConfigError(f"redis.url: each must be a {', '.join(schemes)} URL")
    if redis.mode == "sentinel" and not redis.master_name:
        raise ConfigError('redis.master_name: mode "sentinel" needs the primary\'s name')


def _check_ota(cfg: Config) -> None:
    if cfg.ota.protocol_version not in (1, 2, 3):
        raise ConfigError("ota.protocol_version: must be 1, 2 or 3")
    if cfg.ota.websocket_url and not cfg.ota.websocket_url.startswith(("ws://", "wss://")):
        raise ConfigError("ota.websocket_url: must be a ws:// or wss:// URL, or empty")
    if not -12 * 60 <= cfg.ota.timezone_offset_min <= 14 * 60:
        raise ConfigError("ota.timezone_offset_min: between -720 (UTC-12) and 840 (UTC+14)")
    fw_parts = cfg.ota.firmware_version.split(".") if cfg.ota.firmware_version else []
    if not all(p.isascii() and p.isdigit() for p in fw_parts):  # the firmware calls stoi
        raise ConfigError("ota.firmware_version: digits and dots only, e.g. 1.6.2")
    if cfg.ota.firmware_version and not cfg.ota.firmware_url.startswith(("http://", "https://")):
        raise ConfigError("ota.firmware_url: an http(s):// URL required with firmware_version")
    for i, origin in enumerate(cfg.ota.cors_origins):
        if problem := origin_problem(origin):
            raise ConfigError(f"ota.cors_origins[{i}]: {problem}")


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # RELAY__SERVER__PORT=9000, RELAY__API__TOKENS=a,b, RELAY__BUSINESS__0__URL=http://…
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit():
                    raise ConfigError(f"{name}: expected a list index after {parts[i - 1]}")
                idx = int(part)
                while len(node) <= idx:
                    node.append({})
                node = node[idx]
            else:
                default: Any = [] if part == "business" else {}
                node = node.setdefault(part, default)
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: does not name a key")
        node[parts[-1]] = _env_value(raw)


class _EnvText(str):
    """An environment override, typed by the key it sets rather than guessed up front."""

    __slots__ = ()


def _env_value(raw: str) -> Any:
    return _EnvText(raw)


def _env_typed(tp: Any, raw: _EnvText) -> Any:
    # Numbers, booleans and `[…]` lists are read as TOML; what does not parse is left for
    # the type check, which names the key. Strings stay strings ("123456" as a token).
    # A key's base type decides, under any `Annotated` mark (SignedInt, ZeroOk, Token …).
    base = get_args(tp)[0] if get_origin(tp) is Annotated else tp
    numeric = base in (int, float, bool)
    if numeric or (get_origin(tp) is tuple and raw.lstrip().startswith("[")):
        try:
            return tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            return str(raw)
    return str(raw)


T = TypeVar("T")


def _build(cls: type[T], table: Any, path: str) -> T:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a table")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in fields:
            raise ConfigError(f"{_join(path, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in table:
            kwargs[name] = _convert(hints[name], table[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(value, _EnvText):
        value = _env_typed(tp, value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if item_tp in (str, Token) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        items = tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
        if item_tp == Token and "" in items:
            # An empty token would match a request that sends none (or only spaces).
            raise ConfigError(f"{key}[{items.index('')}]: a token must not be empty")
        return items
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - schema bug
    return _convert_scalar(tp, value, key)


def _number(value: Any, key: str, *, zero_ok: bool) -> float:
    """A float key: positive, or 0 too where the schema allows it (ZeroOk)."""
    wanted = "a number, 0 or more" if zero_ok else "a positive number"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{key}: expected {wanted}")
    return float(value)


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if get_origin(tp) is Annotated and get_args(tp) == get_args(SignedInt):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if tp is float or tp == ZeroOk:
        return _number(value, key, zero_ok=tp == ZeroOk)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected a non-negative integer")
        return value
    if tp in (str, Token, Secret):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        _check_credential(tp, value, key)
        return value
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - schema bug


def _check_credential(tp: Any, value: str, key: str) -> None:
    # The messages never repeat the value: it is a secret.
    if tp == Token and not _VISIBLE_ASCII.fullmatch(value):
        raise ConfigError(
            f"{key}: a token is sent in an HTTP header, so it may hold only visible ASCII"
            " characters (no spaces, line breaks, control or non-ASCII characters)"
        )
    if tp == Secret and value and (not value.isprintable() or not value.strip()):
        raise ConfigError(
            f"{key}: a secret must be printable text, not only spaces (no line breaks,"
            " control or invisible characters); leave it empty to turn it off"
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
