"""Tokens and secrets in the configuration are refused at load when they would break or
weaken the relay at run time, and no message or repr ever shows their value.

- A bearer token (`[api] tokens`, `[auth] tokens`, `[[business]] token`, the providers' API
  keys) travels in an HTTP header or is compared with one: visible ASCII only. An empty one in
  a list would match a request that sends none (the API's `Bearer <U+00A0>` strips to "").
- A secret (`[auth] hmac_secret`, `[[business]] signing_secret`) is HMAC key text: printable,
  not only spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config.load import load, parse
from relay.config.schema import ConfigError
from tests.relay.test_cli import clean_env, run_cli

SECRET_TEXT = "s3cr3t-marker"  # part of every refused value: no message may show it


def business(**overrides: Any) -> dict[str, Any]:
    return {"name": "b", "url": "http://127.0.0.1:8090/chat", **overrides}


def openai_tts(key: str) -> dict[str, Any]:
    return {"tts": {"openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": key}}}


BAD_TOKENS = [
    "",
    " ",
    "\u00a0",
    f"{SECRET_TEXT} with spaces",
    f"{SECRET_TEXT}\r\nX-Injected: 1",
    f"{SECRET_TEXT}\n",
    f"\t{SECRET_TEXT}",
    f"{SECRET_TEXT}\x00",
    f"{SECRET_TEXT}\x7f",
    f"{SECRET_TEXT}é",
    f"{SECRET_TEXT}\u200b",
]
# Where a token is a list item, "" is refused; where it is one value, "" means "none".
Table = Callable[[str], dict[str, Any]]  # the config document holding one value at one key
TOKEN_LISTS: dict[str, Table] = {
    "api.tokens[1]": lambda t: {"api": {"tokens": ["good-token", t]}},
    "auth.tokens[0]": lambda t: {"auth": {"mode": "tokens", "tokens": [t]}},
}
TOKEN_VALUES: dict[str, Table] = {
    "business[0].token": lambda t: {"business": [business(token=t)]},
    "tts.openai.api_key": openai_tts,
    "tts.huoshan.token": lambda t: {"tts": {"huoshan": {"token": t}}},
    "asr.openai.api_key": lambda t: {"asr": {"openai": {"api_key": t}}},
    "asr.volcengine.token": lambda t: {"asr": {"volcengine": {"token": t}}},
    "asr.aliyun.access_key_id": lambda t: {"asr": {"aliyun": {"access_key_id": t}}},
    "tts.aliyun.access_key_id": lambda t: {"tts": {"aliyun": {"access_key_id": t}}},
    "tts.tencent.secret_id": lambda t: {"tts": {"tencent": {"secret_id": t}}},
    "asr.tencent.secret_id": lambda t: {"asr": {"tencent": {"secret_id": t}}},
    "asr.dashscope.api_key": lambda t: {"asr": {"dashscope": {"api_key": t}}},
    "tts.dashscope.api_key": lambda t: {"tts": {"dashscope": {"api_key": t}}},
}
SECRETS: dict[str, Table] = {
    "business[0].signing_secret": lambda s: {"business": [business(signing_secret=s)]},
    "auth.hmac_secret": lambda s: {"auth": {"mode": "hmac", "hmac_secret": s}},
    "asr.aliyun.access_key_secret": lambda s: {"asr": {"aliyun": {"access_key_secret": s}}},
    "tts.aliyun.access_key_secret": lambda s: {"tts": {"aliyun": {"access_key_secret": s}}},
    "tts.tencent.secret_key": lambda s: {"tts": {"tencent": {"secret_key": s}}},
    "asr.tencent.secret_key": lambda s: {"asr": {"tencent": {"secret_key": s}}},
}
BAD_SECRETS = [
    " ",
    "   \t",
    f"{SECRET_TEXT}\n",
    f"{SECRET_TEXT}\r\n",
    f"{SECRET_TEXT}\x00",
    f"{SECRET_TEXT}\x1b[0m",
    f"{SECRET_TEXT}\u0085",
    f"{SECRET_TEXT}\u200b",
    f"{SECRET_TEXT}\u2028",
]


def refused(data: dict[str, Any], key: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert SECRET_TEXT not in message
    return message


@pytest.mark.parametrize("key", list(TOKEN_LISTS))
@pytest.mark.parametrize("token", BAD_TOKENS)
def test_bad_token_in_a_list_is_refused(key: str, token: str) -> None:
    refused(TOKEN_LISTS[key](token), key)


@pytest.mark.parametrize("key", list(TOKEN_VALUES))
@pytest.mark.parametrize("token", BAD_TOKENS[1:])
def test_bad_token_value_is_refused(key: str, token: str) -> None:
    message = refused(TOKEN_VALUES[key](token), key)
    assert "visible ASCII" in message


@pytest.mark.parametrize("key", list(SECRETS))
@pytest.mark.parametrize("secret", BAD_SECRETS)
def test_bad_secret_is_refused(key: str, secret: str) -> None:
    message = refused(SECRETS[key](secret), key)
    assert "printable" in message


GOOD_TOKEN = "Tok_3n-.~+/=!#$%&'*^`|:;<>?@[]{}\\\"(),"


def test_good_tokens_and_secrets_are_kept() -> None:
    cfg = parse(
        {
            "api": {"tokens": [GOOD_TOKEN, "k2"]},
            "auth": {"mode": "hmac", "tokens": [GOOD_TOKEN], "hmac_secret": "päss wörd 秘密"},
            "business": [business(token=GOOD_TOKEN, signing_secret=" spaced secret ")],
            **openai_tts(GOOD_TOKEN),
        }
    )
    assert cfg.api.tokens == (GOOD_TOKEN, "k2")
    assert cfg.auth.tokens == (GOOD_TOKEN,)
    assert cfg.auth.hmac_secret == "päss wörd 秘密"
    assert cfg.business[0].token == GOOD_TOKEN
    assert cfg.business[0].signing_secret == " spaced secret "
    assert cfg.tts.openai.api_key == GOOD_TOKEN


@pytest.mark.parametrize("key", list(TOKEN_VALUES) + list(SECRETS)[:1])
def test_an_empty_single_value_means_none(key: str) -> None:
    parse((TOKEN_VALUES | SECRETS)[key](""))


def test_no_secret_is_in_a_repr() -> None:
    cfg = parse(
        {
            "api": {"tokens": [f"{SECRET_TEXT}-api"]},
            "auth": {"tokens": [f"{SECRET_TEXT}-dev"], "hmac_secret": f"{SECRET_TEXT}-hmac"},
            "business": [business(token=f"{SECRET_TEXT}-b", signing_secret=f"{SECRET_TEXT}-s")],
            "tts": {
                "openai": {"api_key": f"{SECRET_TEXT}-1"},
                "huoshan": {"token": "x"},
                "aliyun": {"access_key_id": f"{SECRET_TEXT}-3", "access_key_secret": SECRET_TEXT},
                "dashscope": {"api_key": f"{SECRET_TEXT}-5"},
            },
            "asr": {
                "openai": {"api_key": f"{SECRET_TEXT}-2"},
                "aliyun": {"access_key_id": f"{SECRET_TEXT}-4", "access_key_secret": SECRET_TEXT},
                "dashscope": {"api_key": f"{SECRET_TEXT}-6"},
            },
        }
    )
    shown = repr(cfg) + repr(cfg.business[0].target())
    assert "business" in shown
    assert SECRET_TEXT not in shown


def test_env_override_is_checked_like_the_file() -> None:
    env = {
        "RELAY__BUSINESS__0__NAME": "b",
        "RELAY__BUSINESS__0__URL": "http://x/",
        "RELAY__BUSINESS__0__TOKEN": "a\r\nb",
    }
    with pytest.raises(ConfigError, match=r"^business\[0\]\.token:"):
        load(None, env=env)
    env = {"RELAY__API__TOKENS": "good, b\u00e4d"}
    with pytest.raises(ConfigError, match=r"^api\.tokens\[1\]:"):
        load(None, env=env)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[api]\ntokens = [""]\n', "api.tokens[0]"),
        ('[api]\ntokens = ["\\u00a0"]\n', "api.tokens[0]"),
        (
            '[[business]]\nname = "b"\nurl = "http://x/"\n'
            f'token = "{SECRET_TEXT}\\r\\nX-Injected: 1"\n',
            "business[0].token",
        ),
        (
            f'[[business]]\nname = "b"\nurl = "http://x/"\nsigning_secret = "{SECRET_TEXT}\\n"\n',
            "business[0].signing_secret",
        ),
    ],
)
def test_check_config_refuses_what_would_break_at_run_time(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(toml, encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), env=clean_env())
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"config error: {key}:"), result.stderr
    assert SECRET_TEXT not in result.stderr
    assert "Traceback" not in result.stderr
