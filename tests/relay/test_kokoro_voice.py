"""Kokoro, the embedded voice, over a real device WebSocket: answers in Mandarin, English and
both, bad input, a killed worker, and bad model files (refuse to start, or fall back); the
voices API."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from asr_tts.tts import kokoro_npm
from asr_tts.tts.base import TTSProvider, Voice
from asr_tts.tts.kokoro import KokoroTTS
from asr_tts.tts.kokoro_files import MODEL_PARTS, STYLE_DIM
from asr_tts.tts.speaker import Speaker
from relay.app import warm_up
from relay.device.connection import DEVICE_ROOM
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness, open_stream, session_of, sse
from tests.relay.voice_helpers import Answer, VoiceDevice, decode_answer, is_tts, rms

ROOT = Path(__file__).resolve().parents[2]
KOKORO = {"provider": "embedded", "pool_size": 1, "threads": 2, "timeout_s": 60}
CLOUD_ASR = {"provider": "openai", "openai": {"base_url": "http://127.0.0.1:9"}}
# An answer's synthesis takes 1-4 s on a busy 2-core machine, and the first loads the model.
ANSWER_TIMEOUT_S = 45


def answering(answers: dict[str, dict[str, Any]]) -> Any:
    """A business script: the chat message names the answer's details."""

    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        details = answers[body["details"]["msg"]]
        await resp.write(
            sse({"event": "message", "type": "chat", "session_id": sid, "details": details})
        )
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    return script


async def ask(dev: VoiceDevice, msg: str) -> Answer:
    await dev.send({"type": "listen", "state": "detect", "text": msg})
    return await dev.answer(timeout=ANSWER_TIMEOUT_S)


def default_voice_of(client: Any) -> TTSProvider:
    speaker: Speaker = client.server.app[DEVICE_ROOM].deps.speaker
    return speaker.provider_for(Voice())


def kokoro_of(client: Any) -> KokoroTTS:
    provider = default_voice_of(client)
    assert isinstance(provider, KokoroTTS)
    return provider


async def test_kokoro_speaks_both_languages_and_survives_bad_input(
    make_relay: RelayFactory, fake: FakeBusiness, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script = answering(
        {
            "zh": {"answer": "你好，我是小智。"},
            "en": {"answer": "Hello, I am here."},
            "mixed": {"answer": "WiFi密码是1234。"},
            "voice": {"answer": "好的。", "voice_type": "nobody_here", "speed_ratio": 1.2},
            "empty": {"answer": ""},
            "marks": {"answer": "！？。…"},
            "emoji": {"answer": "😀😀😀"},
            "kana": {"answer": "こんにちは"},
            "arabic": {"answer": "مرحبا بكم"},
            "long": {"answer": "这是一个很长的回答，" * 1000},
        }
    )
    # A cloud recogniser (never called here): the warm-up then loads no Whisper decoder.
    client = await make_relay(tts=KOKORO, asr=CLOUD_ASR)
    # As `relay serve` does: one worker starts and loads the model before the first answer,
    # and that worker speaks it.
    warm_up(client.app)
    kokoro = kokoro_of(client)
    assert kokoro._warming is not None
    await asyncio.wait_for(kokoro._warming, ANSWER_TIMEOUT_S)
    (warm,) = kokoro._workers
    assert warm.loaded.done()
    dev = await VoiceDevice.connect(client)
    with caplog.at_level(logging.WARNING):
        for msg, words in (("zh", "你好"), ("en", "Hello"), ("mixed", "WiFi"), ("voice", "好的")):
            answer = await ask(dev, msg)
            answer.check_spoken()
            assert words in answer.captions
            assert len(decode_answer(answer.frames)) / 2 / 24000 > 0.4, msg
        assert kokoro._workers == {warm}
        assert "nobody_here" in caplog.text  # the default voice spoke, and the log says why
        for msg in ("empty", "marks", "emoji", "kana", "arabic"):
            answer = await ask(dev, msg)  # spoken or skipped: either way, it ends
            assert answer.order[-1] == "stop", (msg, answer.order)
        assert "こんにちは" in caplog.text
        # 10,000 characters: the first sentence plays soon; an abort ends it with tts stop.
        await dev.send({"type": "listen", "state": "detect", "text": "long"})
        await dev.until(is_tts("sentence_start"), timeout=ANSWER_TIMEOUT_S)
        await dev.abort()
        answer = await dev.answer(timeout=ANSWER_TIMEOUT_S)
        assert answer.order[-1] == "stop"


async def test_a_worker_killed_mid_answer_is_replaced(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    text = "Turn on the kitchen light, then play some quiet music for me."
    fake.script = answering({"go": {"answer": text}})
    client = await make_relay(tts=KOKORO)
    dev = await VoiceDevice.connect(client)
    await dev.send({"type": "listen", "state": "detect", "text": "go"})
    await dev.until(is_tts("start"), timeout=ANSWER_TIMEOUT_S)
    kokoro = kokoro_of(client)
    (pid,) = kokoro.worker_pids()
    os.kill(pid, signal.SIGKILL)  # while it loads the model or synthesises the first sentence
    answer = await dev.answer(timeout=ANSWER_TIMEOUT_S)  # from the first sentence_start on
    assert answer.order[-1] == "stop"
    assert not answer.aborted
    assert answer.order.count("sentence_start") == 2  # both sentences, the first tried again
    assert rms(decode_answer(answer.frames)) > 100
    assert pid not in kokoro.worker_pids()


def shadow_corrupt_part(tmp_path: Path) -> Path:
    """A package named like a model part, with a damaged part.bin, ahead on the path."""
    package = tmp_path / MODEL_PARTS[1][0]
    package.mkdir()
    (package / "__init__.py").write_text("")
    bad = package / "part.bin"
    bad.write_bytes(b"not the model")
    return bad


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`relay check-config` with the shipped config, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", "config.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_corrupt_model_part_stops_the_relay_naming_the_file(tmp_path: Path) -> None:
    bad = shadow_corrupt_part(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = check_config(env)
    assert done.returncode == 2, done.stderr
    assert str(bad) in done.stderr
    fallback = check_config({**env, "RELAY__TTS__FALLBACK": "espeak"})
    assert fallback.returncode == 0, fallback.stderr


async def test_with_fallback_espeak_speaks_when_the_model_is_corrupt(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = shadow_corrupt_part(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake.script = answering({"en": {"answer": "Hello there."}})
    with caplog.at_level(logging.ERROR):
        client = await make_relay(tts={"provider": "embedded", "fallback": "espeak"})
        dev = await VoiceDevice.connect(client)
        (await ask(dev, "en")).check_spoken()
    assert str(bad) in caplog.text
    assert default_voice_of(client).name == "espeak"


async def test_the_voices_api_lists_what_each_provider_speaks(
    make_relay: RelayFactory, tmp_path: Path
) -> None:
    # An operator's extra Kokoro voice (one style row is enough to be listed) made the
    # Mandarin default; a cloud provider configured with its default voice.
    np.save(tmp_path / "zf_extra.npy", np.full((4, STYLE_DIM), 0.1, np.float32))
    client = await make_relay(
        api={"tokens": ["k1"]},
        tts={
            **KOKORO,
            "voices_dir": str(tmp_path),
            "voice": {"zh": "zf_extra"},
            "openai": {"base_url": "http://127.0.0.1:9", "voice": "nova"},
        },
    )
    refused = await client.get("/api/v1/voices")
    assert refused.status == 401
    assert (await refused.json())["errorType"] == "unauthorized"
    resp = await client.get("/api/v1/voices", headers={"Authorization": "Bearer k1"})
    assert resp.status == 200
    body = await resp.json()
    assert body["default_provider"] == "embedded"
    providers = {p["name"]: p for p in body["providers"]}
    assert sorted(providers) == ["embedded", "espeak", "openai"]
    kokoro = providers["embedded"]
    assert (kokoro["engine"], kokoro["default"], kokoro["blends"]) == ("kokoro", True, True)
    shipped = sorted(name.removesuffix(".bin") for name in kokoro_npm.sums())  # kokoro-js's 54
    assert kokoro["voices"] == sorted([*shipped, "zf_extra"])
    assert {"jf_nezumi", "zf_xiaobei", "af_heart"} <= set(shipped)
    assert kokoro["default_voices"] == {"zh": "zf_extra", "en": "af_heart"}
    espeak = providers["espeak"]
    assert (espeak["engine"], espeak["default"]) == ("espeak-ng", False)
    assert {"cmn-latn-pinyin", "en-us", "de"} <= set(espeak["voices"])
    assert espeak["default_voices"] == {"zh": "cmn-latn-pinyin", "*": "en"}
    assert providers["openai"] == {
        "name": "openai",
        "engine": "openai",
        "default": False,
        "voices": ["nova"],
        "default_voices": {"*": "nova"},
        "blends": False,
    }
