"""TTS provider for OpenAI's speech endpoint and the servers that copy it.

Wire format followed (OpenAI API reference, "Create speech"): `POST {base}/v1/audio/speech`
with `Authorization: Bearer <key>` and a JSON body `{"model", "input", "voice",
"response_format", "speed"}`; `speed` goes from 0.25 to 4.0. With `response_format: "pcm"` the
answer body is raw 24 kHz signed 16-bit little-endian mono samples, no header. A failure is a
non-200 status with `{"error": {"message", "type", "param", "code"}}`. There is no pitch
parameter: Voice.pitch_ratio is not used. A WAV answer (some compatible servers ignore
response_format) is recognised by its RIFF/WAVE header and read at its own rate.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
import orjson

from asr_tts.codec import pcm_from_wav
from asr_tts.errors import http_reason
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.http_body import read_capped

SAMPLE_RATE = 24000  # what response_format "pcm" means
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# Two minutes of 24 kHz 16-bit audio; a sentence is a few seconds, so more is a broken server.
MAX_AUDIO_BYTES = SAMPLE_RATE * 2 * 120
_DETAIL_LIMIT = 200
_ERROR_BODY_LIMIT = 64 * 1024


def clamp_speed(ratio: float) -> float:
    """The business's speed_ratio within OpenAI's 0.25-4.0; 1.0 when it is not a number."""
    if not math.isfinite(ratio):
        return 1.0
    return max(MIN_SPEED, min(MAX_SPEED, ratio))


class OpenAITTS:
    """TTS provider speaking OpenAI's `/v1/audio/speech` wire, asking for raw 24 kHz PCM."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession,
        model: str = "tts-1",
        default_voice: str = "alloy",
        timeout_s: float = 30.0,
        name: str = "openai",
    ) -> None:
        base = base_url.rstrip("/")
        # SDK-style base URLs already end in /v1 (https://api.openai.com/v1): do not double it.
        self._url = f"{base}/audio/speech" if base.endswith("/v1") else f"{base}/v1/audio/speech"
        self._api_key = api_key
        self._session = session
        self._model = model
        self._default_voice = default_voice
        self._timeout_s = timeout_s
        self.name = name

    async def voice_list(self) -> VoiceList:
        """Only the configured default voice: the service's own catalogue is not asked."""
        return VoiceList("openai", (self._default_voice,), {"*": self._default_voice})

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text`; raise TTSError on a failed, malformed or late answer."""
        body = {
            "model": self._model,
            "input": text,
            "voice": voice.voice_type or self._default_voice,
            "response_format": "pcm",
            "speed": clamp_speed(voice.speed_ratio),
        }
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
        }
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.post(self._url, data=orjson.dumps(body), headers=headers) as resp,
            ):
                if resp.status != 200:
                    detail = self._error_detail(await read_capped(resp, _ERROR_BODY_LIMIT))
                    raise TTSError(
                        f"{self.name}: HTTP {resp.status}{detail}", reason=http_reason(resp.status)
                    )
                if resp.content_type == "application/json":
                    raise TTSError(
                        f"{self.name}: a JSON answer where PCM audio was expected",
                        reason="bad_answer",
                    )
                samples = await read_capped(resp, MAX_AUDIO_BYTES)
        except TimeoutError as exc:
            raise TTSError(
                f"{self.name}: no answer within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            # str(), not repr(): the repr of some aiohttp errors carries the request headers.
            raise TTSError(
                f"{self.name}: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc
        if samples[:4] == b"RIFF" and samples[8:12] == b"WAVE":
            # Some compatible servers answer WAV whatever the response_format asked for.
            try:
                return pcm_from_wav(samples)
            except ValueError as exc:
                raise TTSError(
                    f"{self.name}: unusable WAV audio: {exc}", reason="bad_answer"
                ) from exc
        if not samples or len(samples) % 2:
            raise TTSError(
                f"{self.name}: {len(samples)} bytes is not 16-bit PCM audio", reason="bad_answer"
            )
        return Pcm(samples, SAMPLE_RATE)

    def _error_detail(self, body: bytes) -> str:
        """`type/code: message` from an OpenAI error body, or nothing if it is not one."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ""
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):
            return ""
        kind = "/".join(str(error[k]) for k in ("type", "code") if error.get(k) is not None)
        message = str(error.get("message") or "")
        # Some servers echo the key they rejected; it must not reach the logs.
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return f" {kind}: {message[:_DETAIL_LIMIT]}"
