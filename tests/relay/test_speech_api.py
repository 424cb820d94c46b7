"""Speech over HTTP (docs/integration.md §4): `POST /api/v1/tts` and `POST /api/v1/stt` through
the relay's own providers, each refusal in the API error shape, behind the API token.

The round trip speaks with espeak-ng and hears with the pocketsphinx command grammar: the
cheapest real pair; accuracy is not what is tested. Provider failures and timeouts use fakes
of the OpenAI-compatible wire on loopback.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from asr_tts.asr.base import wav_from_pcm
from asr_tts.codec import pcm_from_wav, resample
from protocol.binary import encode_frame
from tests.asr_tts.fake_tencent import APPID, SECRET_ID, SECRET_KEY, FakeTencentASR
from tests.relay.conftest import RelayFactory
from tests.relay.voice_helpers import COMMANDS, FakeTranscriber, opus_packets
from tests.test_openapi import check_answer

GRAMMAR = {"provider": "pocketsphinx", "grammar_words": list(COMMANDS), "pool_size": 1}
OPUS_FRAMES = "application/x-opus-frames"


def v3_frame(packet: bytes) -> bytes:
    return encode_frame(3, packet)


async def error_of(resp: Any, status: int, error_type: str) -> str:
    """The refusal's `error`, once its status and `errorType` are as expected and as
    docs/openapi.yaml documents them."""
    raw = await resp.read()
    body = check_answer(resp.url.path, "POST", resp.status, resp.content_type, raw)
    assert (resp.status, body["errorType"]) == (status, error_type), body
    return str(body["error"])


def ogg_to_pcm(data: bytes) -> tuple[bytes, int]:
    """An Ogg Opus file decoded by libavformat and libopus: s16le mono and its rate."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.clip(np.concatenate(chunks) * 32767, -32768, 32767).astype("<i2")
    return samples.tobytes(), rate


async def test_tts_then_stt_round_trip_in_every_format(
    make_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.http.speech")
    client = await make_relay(asr=GRAMMAR)
    said = "turn on the light"

    resp = await client.post("/api/v1/tts", json={"text": said, "speed_ratio": 0.9})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "audio/wav"
    assert resp.headers["X-Relay-TTS-Provider"] == "espeak"
    wav = await resp.read()
    check_answer("/api/v1/tts", "POST", 200, resp.content_type, wav)
    pcm = pcm_from_wav(wav)
    assert (pcm.sample_rate, pcm.duration_s > 0.5) == (24000, True)

    heard = await client.post("/api/v1/stt", data=wav, headers={"Content-Type": "audio/wav"})
    assert heard.status == 200, await heard.text()
    check_answer("/api/v1/stt", "POST", 200, heard.content_type, await heard.read())
    assert await heard.json() == {"text": said, "provider": "pocketsphinx", "language": None}

    resp = await client.post("/api/v1/tts", json={"text": said, "format": "opus"})
    assert (resp.status, resp.content_type) == (200, "audio/ogg")
    samples, rate = ogg_to_pcm(await resp.read())
    # Big-endian raw PCM at the Ogg file's rate, as RFC 2586 defines audio/L16.
    big = np.frombuffer(samples, dtype="<i2").astype(">i2").tobytes()
    heard = await client.post(
        "/api/v1/stt", data=big, headers={"Content-Type": f"audio/L16;rate={rate}"}
    )
    assert (await heard.json())["text"] == said

    # The device's own uplink: Opus packets in protocol v3 frames, back to back.
    at16k = resample(pcm, 16000).samples
    frames = b"".join(encode_frame(3, p) for p in opus_packets(at16k))
    heard = await client.post("/api/v1/stt", data=frames, headers={"Content-Type": OPUS_FRAMES})
    assert (await heard.json())["text"] == said

    # One story line per request (README "Logs"), the text itself left out.
    lines = [r.getMessage().rsplit(" duration_ms=", 1)[0] for r in caplog.records]
    assert lines == [
        "speech op=tts result=ok provider=espeak chars=17",
        "speech op=stt result=ok provider=pocketsphinx chars=17",
        "speech op=tts result=ok provider=espeak chars=17",
        "speech op=stt result=ok provider=pocketsphinx chars=17",
        "speech op=stt result=ok provider=pocketsphinx chars=17",
    ]


async def test_both_routes_need_the_api_token(make_relay: RelayFactory) -> None:
    client = await make_relay(api={"tokens": ["t0ken"]})
    for path in ("/api/v1/stt", "/api/v1/tts"):
        await error_of(await client.post(path, data=b"x"), 401, "unauthorized")
    # With the token, the request gets as far as its own checks.
    auth = {"Authorization": "Bearer t0ken", "Content-Type": "text/plain"}
    await error_of(await client.post("/api/v1/stt", headers=auth), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("content_type", "body", "status", "error_type", "says"),
    [
        ("text/plain", b"hi", 415, "unsupported_media_type", "text/plain"),
        ("audio/wav", b"RIFF....WAVEjunk", 422, "bad_audio", "WAV"),
        ("audio/wav", wav_from_pcm(b""), 422, "bad_audio", "no samples"),
        ("audio/L16;rate=16000;endianness=little-endian", b"\x00\x00\x00", 422, "bad_audio", "3 "),
        ("audio/L16;rate=fast", b"\x00\x00", 400, "bad_request", "rate"),
        ("audio/L16;endianness=middle", b"\x00\x00", 400, "bad_request", "endianness"),
        (OPUS_FRAMES, encode_frame(3, b"\xff\xff\xff")[:-1], 422, "bad_audio", "cut short"),
        (OPUS_FRAMES, encode_frame(3, b""), 422, "bad_audio", "empty audio packet"),
        ("audio/wav", wav_from_pcm(bytes(32000 * 2)), 413, "too_large", "2.0 s"),
        ("audio/L16", bytes(400_000), 413, "too_large", "longer than 1.5 s"),
        # Checked before resampling: the slowest rate is refused at its own length.
        ("audio/L16;rate=8000", bytes(30_000), 413, "too_large", "lasts 1.9 s"),
        # Decoding stops at the first packet past the limit, not at the body's end.
        (
            OPUS_FRAMES,
            b"".join(map(v3_frame, opus_packets(bytes(64_000)))),
            413,
            "too_large",
            "1.6 s",
        ),
    ],
)
async def test_unusable_recordings_are_refused_before_any_recogniser(
    make_relay: RelayFactory,
    caplog: pytest.LogCaptureFixture,
    content_type: str,
    body: bytes,
    status: int,
    error_type: str,
    says: str,
) -> None:
    # The default recogniser (Whisper) would be slow to load: none of these reaches it.
    caplog.set_level(logging.INFO, logger="relay.http.speech")
    client = await make_relay(vad={"max_utterance_s": 1.5})
    resp = await client.post("/api/v1/stt", data=body, headers={"Content-Type": content_type})
    assert says in await error_of(resp, status, error_type)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"speech op=stt result={error_type} provider=embedded chars=- ")


async def test_stt_is_503_when_no_decoder_frees_up_in_time(make_relay: RelayFactory) -> None:
    # A cold pool: its one decoder is still starting when the wait of [asr] timeout_s ends.
    client = await make_relay(asr={**GRAMMAR, "timeout_s": 0.05})
    wav = wav_from_pcm(bytes(3200))
    resp = await client.post("/api/v1/stt", data=wav, headers={"Content-Type": "audio/wav"})
    await error_of(resp, 503, "asr_busy")


@pytest.mark.parametrize(
    ("mode", "status", "error_type", "reason"),
    [("error", 502, "provider_failed", "refused"), ("stall", 504, "provider_timeout", "timeout")],
)
async def test_stt_provider_failures(
    make_relay: RelayFactory,
    aiohttp_server: Any,
    mode: Any,
    status: int,
    error_type: str,
    reason: str,
) -> None:
    server = await aiohttp_server(FakeTranscriber(mode).app())
    openai = {"base_url": str(server.make_url("/")), "timeout_s": 0.3}
    client = await make_relay(asr={"provider": "openai", "openai": openai})
    wav = wav_from_pcm(bytes(3200))
    resp = await client.post("/api/v1/stt", data=wav, headers={"Content-Type": "audio/wav"})
    await error_of(resp, status, error_type)
    sample = f'relay_provider_errors_total{{kind="asr",provider="openai",reason="{reason}"}}'
    assert await metric_value(client, sample) == 1.0


async def test_stt_asks_for_the_language_a_device_would(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    transcriber = FakeTranscriber(text="你好")
    server = await aiohttp_server(transcriber.app())
    client = await make_relay(
        asr={"provider": "openai", "openai": {"base_url": str(server.make_url("/"))}}
    )
    wav = wav_from_pcm(bytes(3200))
    resp = await client.post(
        "/api/v1/stt?language=zh-CN", data=wav, headers={"Content-Type": "audio/wav"}
    )
    assert await resp.json() == {"text": "你好", "provider": "openai", "language": "zh"}
    assert "你好".encode() in await resp.read()  # UTF-8 as it is, no \u escapes
    resp = await client.post(
        "/api/v1/stt",
        data=wav,
        headers={"Content-Type": "audio/x-wav", "Accept-Language": "en-US,en;q=0.9"},
    )
    assert (await resp.json())["language"] == "en"
    assert transcriber.languages == ["zh", "en"]


async def metric_value(client: TestClient[Any, Any], sample: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    ("body", "status", "error_type", "says"),
    [
        ([], 400, "bad_request", "JSON object"),
        ({"text": " "}, 400, "bad_request", "text"),
        ({"text": "x" * 2001}, 400, "bad_request", "2000 characters"),
        ({"text": "hi", "format": "mp3"}, 400, "bad_request", "format"),
        ({"text": "hi", "speed_ratio": 20}, 400, "bad_request", "speed_ratio"),
        ({"text": "hi", "voice_type": 7}, 400, "bad_request", "voice_type"),
    ],
)
async def test_unusable_tts_requests_are_refused(
    make_relay: RelayFactory, body: Any, status: int, error_type: str, says: str
) -> None:
    client = await make_relay()
    assert says in await error_of(await client.post("/api/v1/tts", json=body), status, error_type)


async def test_tts_falls_back_to_the_default_voice_and_shares_the_frame_cache(
    make_relay: RelayFactory,
) -> None:
    client = await make_relay()
    bodies = []
    for _ in range(2):
        resp = await client.post("/api/v1/tts", json={"text": "Hi.", "tts_provider": "nobody"})
        assert resp.headers["X-Relay-TTS-Provider"] == "espeak"  # the default spoke
        bodies.append(await resp.read())
    assert bodies[0] == bodies[1]
    assert await metric_value(client, "relay_tts_fallbacks_total") == 2.0
    # The second answer came from the cache: one synthesis for both.
    assert await metric_value(client, 'relay_tts_seconds_count{provider="espeak"}') == 1.0


@pytest.mark.parametrize("fmt", ["wav", "opus"])
async def test_text_with_nothing_to_say_is_one_silent_frame(
    make_relay: RelayFactory, fmt: str
) -> None:
    client = await make_relay()
    resp = await client.post("/api/v1/tts", json={"text": "🙂 **", "format": fmt})
    assert resp.status == 200
    data = await resp.read()
    if fmt == "wav":
        samples, rate = pcm_from_wav(data).samples, 24000
    else:
        samples, rate = ogg_to_pcm(data)
    # 60 ms (less the Opus pre-skip of 6.5 ms), all of it silent.
    assert len(samples) // 2 == rate * 60 // 1000 - (312 * rate // 48000 if fmt == "opus" else 0)
    assert not any(samples)


@pytest.mark.parametrize(
    ("stall", "status", "error_type", "reason"),
    [(False, 502, "provider_failed", "refused"), (True, 504, "provider_timeout", "timeout")],
)
async def test_tts_provider_failures(
    make_relay: RelayFactory,
    aiohttp_server: Any,
    stall: bool,
    status: int,
    error_type: str,
    reason: str,
) -> None:
    async def speech(_request: web.Request) -> web.Response:
        if stall:
            await asyncio.sleep(30)  # cancelled when the relay hangs up
        return web.json_response({"error": {"message": "boom"}}, status=500)

    fake = web.Application()
    fake.router.add_post("/v1/audio/speech", speech)
    server = await aiohttp_server(fake)
    openai = {"base_url": str(server.make_url("/")), "timeout_s": 0.3}
    client = await make_relay(tts={"provider": "espeak", "openai": openai})
    resp = await client.post("/api/v1/tts", json={"text": "Hello.", "tts_provider": "openai"})
    assert "openai" in await error_of(resp, status, error_type)
    assert await metric_value(client, "relay_tts_errors_total") == 1.0
    sample = f'relay_provider_errors_total{{kind="tts",provider="openai",reason="{reason}"}}'
    assert await metric_value(client, sample) == 1.0


async def test_stt_is_504_when_a_cloud_recogniser_does_not_connect_in_time(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    # Not "busy" (503 asr_busy names the embedded decoder pool): the provider's own timeout.
    fake = FakeTencentASR(mode="slow", delay_s=2.0)
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("/asr/v2")).replace("http", "ws", 1)
    tencent = {"appid": APPID, "url": url, "secret_id": SECRET_ID, "secret_key": SECRET_KEY}
    client = await make_relay(asr={"provider": "tencent", "tencent": {**tencent, "timeout_s": 0.2}})
    wav = wav_from_pcm(bytes(3200))
    resp = await client.post("/api/v1/stt", data=wav, headers={"Content-Type": "audio/wav"})
    await error_of(resp, 504, "provider_timeout")
