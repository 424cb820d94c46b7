"""Speech over HTTP for partners (docs/integration.md §4): `POST /api/v1/stt` hears one
recording through the relay's recogniser, `POST /api/v1/tts` speaks text through its Speaker.

Both use what a device's speech uses (the configured ASR provider and its decoder pool, the
Speaker with its providers, frame cache and fallback to the default voice) and its limits: a
recording no longer than `[vad] max_utterance_s`, the text of a pushed `speak`. A provider's
own timeout ends the request as it ends a device's utterance; every provider raises its
ASRError or TTSError from the TimeoutError that ended it, which is how a timeout (504) is told
from a failure (502) here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.helpers import parse_mimetype

from asr_tts.asr.base import (
    BYTES_PER_SECOND,
    SAMPLE_RATE,
    ASRError,
    ASRProvider,
    wav_from_pcm,
)
from asr_tts.asr.whisper import WhisperASR
from asr_tts.codec import FrameEncoder, pcm_from_wav, resample
from asr_tts.ogg import ogg_opus
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice
from asr_tts.uplink import AudioError, UplinkDecoder
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat, downlink_for
from protocol.binary import split_v3
from protocol.business import speak_with_voice
from protocol.errors import ApiError, ProtocolError, Refusal
from relay.answers import api_error, refused
from relay.auth.handshake import spoken_language
from relay.config.schema import TTSConfig
from relay.device.connection import DEVICE_ROOM
from relay.device.turn import voice_of
from relay.http.api import read_body, read_json
from relay.http.devices import MAX_SPEAK_CHARS
from relay.logs import ms, story
from relay.logsafe import printable
from relay.resources import RELAY_KEY

log = logging.getLogger(__name__)

# The largest recording body: `[vad] max_utterance_s` of 48 kHz stereo 16-bit PCM, plus room
# for a WAV's header chunks.
_BODY_BYTES_PER_S = 48000 * 2 * 2
_BODY_SLACK = 64 * 1024
_FEED_BYTES = SAMPLE_RATE * 2 // 10  # the recogniser is fed 100 ms at a time
_WAV_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
_L16 = "audio/l16"
OPUS_FRAMES = "application/x-opus-frames"
# The text as UTF-8, not \u escapes: a curl user reads Mandarin as it was said.
_UTF8_JSON = functools.partial(json.dumps, ensure_ascii=False)
_TTS_EXAMPLE = '{"text":"Hello there!","format":"wav"}'
_TTS_STRINGS = ("voice_type", "tts_provider")
_TTS_RATIOS = ("speed_ratio", "pitch_ratio")  # as in a chat event (docs/protocol.md §2.2)


async def stt(request: web.Request) -> web.StreamResponse:
    """`POST /api/v1/stt`: a recording in, `{"text","provider","language"}` out."""
    if request.app[RELAY_KEY].draining.is_set():
        return api_error(ApiError.DRAINING, "relay is shutting down")
    started = time.monotonic()
    voice = request.app[DEVICE_ROOM].voice
    provider = voice.asr.name if voice is not None else None
    try:
        answer = await _hear(request)
    except Refusal as exc:
        _told("stt", exc.code, provider, None, started)
        return refused(exc)
    _told("stt", "ok", provider, len(answer["text"] or ""), started)
    return web.json_response(answer, dumps=_UTF8_JSON)


def _told(op: str, result: str, provider: str | None, chars: int | None, started: float) -> None:
    """The request's line in the log's story (README "Logs"); the text itself is left out."""
    took = ms(time.monotonic() - started)
    story(log, "speech", op=op, result=result, provider=provider, chars=chars, duration_ms=took)


async def _hear(request: web.Request) -> dict[str, str | None]:
    """The answer to a `POST /api/v1/stt`; Refusal for what cannot be heard."""
    relay = request.app[RELAY_KEY]
    voice = request.app[DEVICE_ROOM].voice
    assert voice is not None  # make_app always builds the microphone pipeline
    pcm = await _recording(request, _decoder(request), relay.config.vad.max_utterance_s)
    # As at a device's handshake: ?language=, else Accept-Language (docs/protocol.md §1.1).
    asked = spoken_language(
        request.query.get("language") or request.headers.get("Accept-Language") or ""
    )
    deps = voice.speaking(asked)
    text = await _recognise(deps.asr, deps.language, pcm.samples, relay.metrics)
    language = deps.asr.language(deps.language) if isinstance(deps.asr, WhisperASR) else None
    return {"text": text, "provider": deps.asr.name, "language": language or deps.language}


async def _recording(
    request: web.Request, decode: Callable[[bytes, float], Pcm], max_s: float
) -> Pcm:
    """The body as 16 kHz mono PCM, at most `max_s` long (`[vad] max_utterance_s`, the longest
    utterance a device's is cut at). The length is checked before resampling: a body that
    claims a tiny sample rate would otherwise grow a thousandfold."""
    body = await read_body(request, int(max_s * _BODY_BYTES_PER_S) + _BODY_SLACK)
    if body is None:
        raise Refusal(ApiError.TOO_LARGE, f"a recording longer than {max_s:g} s")
    pcm = await asyncio.to_thread(decode, body, max_s)
    if not pcm.samples:
        raise Refusal(ApiError.BAD_AUDIO, "the recording holds no samples")
    if pcm.duration_s > max_s:
        raise _too_long(pcm.duration_s, max_s)
    return await asyncio.to_thread(resample, pcm, SAMPLE_RATE)


def _too_long(seconds: float, max_s: float) -> Refusal:
    msg = f"the recording lasts {seconds:.1f} s, over [vad] max_utterance_s"
    return Refusal(ApiError.TOO_LARGE, msg, f"send at most {max_s:g} s")


def _decoder(request: web.Request) -> Callable[[bytes, float], Pcm]:
    """How the body's content type turns into mono PCM (`decode(body, max_s)`); 415 for a
    type it is not."""
    mime = parse_mimetype(request.headers.get("Content-Type", ""))
    kind = f"{mime.type}/{mime.subtype}"
    if kind in _WAV_TYPES:
        return _from_wav
    if kind == _L16:
        rate = _number(request, mime.parameters, "rate", SAMPLE_RATE, (8000, 384000))
        channels = _number(request, mime.parameters, "channels", 1, (1, 8))
        endianness = mime.parameters.get("endianness") or request.query.get("endianness", "")
        if endianness not in ("", "big-endian", "little-endian"):
            msg = f"endianness {printable(endianness)} is not big-endian or little-endian"
            raise Refusal(ApiError.BAD_REQUEST, msg)
        dtype = "<i2" if endianness == "little-endian" else ">i2"  # RFC 2586: network order
        return lambda body, _max_s: _from_l16(body, rate, channels, dtype)
    if kind == OPUS_FRAMES:
        return _from_opus_frames
    raise Refusal(ApiError.UNSUPPORTED_MEDIA, f"cannot hear {printable(kind)}")


def _number(
    request: web.Request,
    params: Mapping[str, str],
    name: str,
    default: int,
    bounds: tuple[int, int],
) -> int:
    """A media type parameter, else the query parameter of that name, else `default`."""
    raw = params.get(name) or request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not bounds[0] <= value <= bounds[1]:
        msg = f"{name} must be a whole number from {bounds[0]} to {bounds[1]}"
        raise Refusal(ApiError.BAD_REQUEST, msg, "for example audio/L16;rate=16000;channels=1")
    return value


def _from_wav(body: bytes, _max_s: float) -> Pcm:
    try:
        return pcm_from_wav(body)
    except ValueError as exc:
        raise Refusal(ApiError.BAD_AUDIO, f"unusable WAV: {exc}") from None


def _from_l16(body: bytes, rate: int, channels: int, dtype: str) -> Pcm:
    if len(body) % (2 * channels):
        msg = f"{len(body)} bytes is not whole frames of {channels}-channel 16-bit samples"
        raise Refusal(ApiError.BAD_AUDIO, msg)
    x = np.frombuffer(body, dtype=dtype).reshape(-1, channels).astype(np.int32)
    mono = (x.sum(axis=1) // channels).astype("<i2").tobytes()
    return Pcm(mono, rate)


def _from_opus_frames(body: bytes, max_s: float) -> Pcm:
    """Protocol v3 frames back to back, as a device sends them (docs/protocol.md §1.4); libopus
    decodes every Opus stream, any rate or channel count, straight to 16 kHz mono. Decoding
    stops past `max_s`: a packet of a few bytes can stand for 120 ms of audio."""
    decoder = UplinkDecoder(AudioFormat("opus", SAMPLE_RATE, 1, 60), SAMPLE_RATE)
    pcm = bytearray()
    try:
        for packet in split_v3(body):
            pcm += decoder.decode(packet)
            if len(pcm) > max_s * BYTES_PER_SECOND:
                raise _too_long(len(pcm) / BYTES_PER_SECOND, max_s)
    except ProtocolError as exc:
        raise Refusal(ApiError.BAD_AUDIO, f"not protocol v3 frames: {exc.detail}") from None
    except AudioError as exc:
        raise Refusal(ApiError.BAD_AUDIO, str(exc)) from None
    return Pcm(bytes(pcm), SAMPLE_RATE)


async def _recognise(asr: ASRProvider, language: str | None, pcm: bytes, metrics: Metrics) -> str:
    """The recording's text from `asr`, as a device's utterance is recognised."""
    try:
        stream = await asr.open(language=language)
    except ASRError as exc:
        raise _asr_refusal(asr, exc, opening=True, metrics=metrics) from None
    try:
        for i in range(0, len(pcm), _FEED_BYTES):
            await stream.feed(pcm[i : i + _FEED_BYTES])
        started = time.monotonic()
        text = (await stream.finish()).strip()
    except ASRError as exc:
        raise _asr_refusal(asr, exc, opening=False, metrics=metrics) from None
    finally:
        await stream.cancel()  # idempotent; frees the decoder when feed() failed
    metrics.asr_latency.labels(asr.name).observe(time.monotonic() - started)
    return text


def _asr_refusal(asr: ASRProvider, exc: ASRError, *, opening: bool, metrics: Metrics) -> Refusal:
    metrics.provider_errors.labels("asr", asr.name, exc.reason).inc()
    log.warning("stt api: asr %s failed: %s", asr.name, printable(exc))
    if opening and exc.reason == "worker" and isinstance(exc.__cause__, TimeoutError):
        # The embedded pool had no decoder free within [asr] timeout_s: busy, retry.
        return Refusal(ApiError.ASR_BUSY, "no speech recogniser free in time")
    if isinstance(exc.__cause__, TimeoutError) or exc.reason == "timeout":
        # A cloud recogniser that did not connect or answer within its own timeout_s.
        return Refusal(ApiError.PROVIDER_TIMEOUT, f"{asr.name} recogniser gave no text in time")
    return Refusal(ApiError.PROVIDER_FAILED, f"{asr.name} recogniser failed")


async def tts(request: web.Request) -> web.StreamResponse:
    """`POST /api/v1/tts`: text and voice fields in, a WAV or Ogg Opus file out."""
    relay = request.app[RELAY_KEY]
    if relay.draining.is_set():
        return api_error(ApiError.DRAINING, "relay is shutting down")
    got = await read_json(request, 64 * 1024, _TTS_EXAMPLE)
    if isinstance(got, web.Response):
        return got
    _raw, body = got
    started = time.monotonic()
    try:
        voice, fmt = _tts_request(body, relay.config.tts, relay.downlink(AudioFormat()))
        provider = request.app[DEVICE_ROOM].deps.speaker.provider_for(voice).name
        frames = await _speak(request, body["text"], voice, fmt, provider)
    except Refusal as exc:
        _told("tts", exc.code, None, None, started)
        return refused(exc)
    _told("tts", "ok", provider, len(body["text"]), started)
    headers = {"X-Relay-TTS-Provider": provider}
    if fmt.format == "opus":
        data = ogg_opus(frames, fmt.frame_s, fmt.sample_rate)
        return web.Response(body=data, content_type="audio/ogg", headers=headers)
    return web.Response(
        body=wav_from_pcm(b"".join(frames), fmt.sample_rate),
        content_type="audio/wav",
        headers=headers,
    )


def _tts_request(body: Any, cfg: TTSConfig, opus: AudioFormat) -> tuple[Voice, AudioFormat]:
    """The voice and audio format a `POST /api/v1/tts` body asks for; 400 when it is bad.
    Opus is the downlink a device is sent (its frames, and so its cached sentences); WAV is
    PCM at the downlink's rate."""
    if not isinstance(body, dict):
        raise Refusal(ApiError.BAD_REQUEST, "body must be a JSON object", _TTS_EXAMPLE)
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Refusal(ApiError.BAD_REQUEST, "text must be a non-empty string", _TTS_EXAMPLE)
    if len(text) > MAX_SPEAK_CHARS:
        msg = f"text is longer than {MAX_SPEAK_CHARS} characters (as a pushed speak)"
        raise Refusal(ApiError.BAD_REQUEST, msg, _TTS_EXAMPLE)
    fmt = body.get("format", "wav")
    if fmt not in ("wav", "opus"):
        raise Refusal(ApiError.BAD_REQUEST, 'format must be "wav" or "opus"', _TTS_EXAMPLE)
    for name in _TTS_STRINGS:
        if name in body and not isinstance(body[name], str):
            raise Refusal(ApiError.BAD_REQUEST, f"{name} must be a string", _TTS_EXAMPLE)
    for name in _TTS_RATIOS:
        value = body.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= value <= 10:
            raise Refusal(ApiError.BAD_REQUEST, f"{name} must be a number from 0.1 to 10")
    if fmt == "opus":
        audio = opus
    else:
        rate = cfg.downlink_sample_rate
        audio = downlink_for(AudioFormat("pcm", rate), rate, cfg.frame_duration_ms)
    return voice_of(speak_with_voice(text, body)), audio


async def _speak(
    request: web.Request, text: str, voice: Voice, fmt: AudioFormat, provider: str
) -> list[bytes]:
    """Every frame of `text`, sentence after sentence, through the Speaker devices use."""
    deps = request.app[DEVICE_ROOM].deps
    frames: list[bytes] = []
    encoder = FrameEncoder(fmt)
    try:
        segments = deps.speaker.sentences(text, voice, encoder)
        async with contextlib.aclosing(segments) as it:
            async for _sentence, part in it:
                frames.extend(part)
    except TTSError as exc:
        deps.metrics.tts_errors.inc()
        deps.metrics.provider_errors.labels("tts", provider, exc.reason).inc()
        log.warning("tts api: %s failed: %s", provider, printable(exc))
        if isinstance(exc.__cause__, TimeoutError):
            raise Refusal(ApiError.PROVIDER_TIMEOUT, f"{provider} gave no speech in time") from None
        raise Refusal(ApiError.PROVIDER_FAILED, f"{provider} could not speak the text") from None
    if not frames:  # nothing to say (emoji alone): a device hears nothing, a file one frame
        frames = encoder.encode(Pcm(bytes(2 * fmt.frame_samples), fmt.sample_rate))
    return frames
