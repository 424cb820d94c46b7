"""`[asr.tencent]` and `[tts.tencent]`: checked at load, built by relay/providers.py into
providers that speak to the Tencent fakes with the configured account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.codec import FrameEncoder
from asr_tts.tts.base import Voice
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from relay.config.load import load, parse
from relay.config.schema import ConfigError
from relay.providers import build_asr, build_speaker
from tests.asr_tts.fake_tencent import APPID, SECRET_ID, SECRET_KEY, FakeTencentASR, FakeTencentTTS
from tests.asr_tts.test_asr_volcengine import recognise, speech

KEYS = {"secret_id": SECRET_ID, "secret_key": SECRET_KEY}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_asr_provider_tencent_recognises_through_the_configured_account(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    fake = FakeTencentASR()
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("/asr/v2")).replace("http", "ws", 1)
    tencent = {"appid": APPID, "url": url, "engine_model_type": "16k_zh_large", **KEYS}
    asr = build_asr(parse({"asr": {"provider": "tencent", "tencent": tencent}}), session)
    assert asr.name == "tencent"
    assert await recognise(await asr.open(), speech(0.3)) == fake.text
    assert fake.queries[0]["engine_model_type"] == "16k_zh_large"


async def test_tts_tencent_is_registered_when_its_keys_are_set(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    fake = FakeTencentTTS()
    server = await aiohttp_server(fake.app())
    tencent = {"url": str(server.make_url("/")), "voice": 101002, "volume": 3.0, **KEYS}
    cfg = parse({"tts": {"provider": "espeak", "cache_mb": 0, "tencent": tencent}})
    with ThreadPoolExecutor(1) as executor:
        speaker = build_speaker(cfg, session, executor, Metrics())
        encoder = FrameEncoder(AudioFormat(sample_rate=24000))
        out = [x async for x in speaker.sentences("好。", Voice(provider="tencent"), encoder)]
    assert out[0][1]  # frames
    assert [(b["VoiceType"], b["Volume"]) for b in fake.bodies] == [(101002, 3.0)]
    unset = parse({"tts": {"provider": "espeak"}})
    with ThreadPoolExecutor(1) as executor:
        speaker = build_speaker(unset, session, executor, Metrics())
    assert speaker.provider_for(Voice(provider="tencent")).name == "espeak"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"asr": {"provider": "tencent", "tencent": KEYS}}, r"^asr\.tencent\.appid: appid, "),
        (
            {"asr": {"provider": "tencent", "tencent": {"appid": APPID, "secret_id": "x"}}},
            r"^asr\.tencent\.appid: appid, secret_id and secret_key are required",
        ),
        ({"asr": {"tencent": {"appid": "12ab"}}}, r"^asr\.tencent\.appid: .* is a number"),
        ({"asr": {"tencent": {"appid": "١٢"}}}, r"^asr\.tencent\.appid: .* is a number"),
        (
            {"tts": {"provider": "tencent", "tencent": {"secret_id": "x"}}},
            r"^tts\.tencent\.secret_id: secret_id and secret_key required",
        ),
        ({"tts": {"tencent": {"voice": "zh-female"}}}, r"^tts\.tencent\.voice"),
        (
            {"asr": {"tencent": {"engine_model_type": "8k_zh"}}},
            r"^asr\.tencent\.engine_model_type: the relay sends 16 kHz audio",
        ),
    ],
)
def test_incomplete_or_bad_tencent_settings_are_refused(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse(data)


def test_keys_come_from_the_environment_and_stay_out_of_reprs() -> None:
    env = {
        "RELAY__ASR__PROVIDER": "tencent",
        "RELAY__ASR__TENCENT__APPID": APPID,
        "RELAY__ASR__TENCENT__SECRET_ID": SECRET_ID,
        "RELAY__ASR__TENCENT__SECRET_KEY": SECRET_KEY,
        "RELAY__TTS__TENCENT__SECRET_ID": SECRET_ID,
        "RELAY__TTS__TENCENT__SECRET_KEY": SECRET_KEY,
    }
    cfg = load(None, env=env)
    assert (cfg.asr.tencent.secret_key, cfg.tts.tencent.secret_key) == (SECRET_KEY, SECRET_KEY)
    assert SECRET_KEY not in repr(cfg)
    assert SECRET_ID not in repr(cfg)
