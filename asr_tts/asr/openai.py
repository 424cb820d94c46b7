"""The "openai" ASR provider: one batch request per utterance to an OpenAI-compatible server.

POST {base_url}/v1/audio/transcriptions, multipart/form-data with `file` (a 16 kHz mono
16-bit WAV), `model`, optional `language` (ISO 639-1) and `response_format=json`, header
`Authorization: Bearer <api_key>`; the answer is {"text": "..."}, an error is
{"error": {"message", "type", "code"}} with a non-200 status. OpenAI's own server, whisper.cpp's
server, faster-whisper-server and LocalAI speak the same.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from asr_tts.asr.base import BYTES_PER_SECOND, MAX_UTTERANCE_S, ASRError, ASRStream, wav_from_pcm
from asr_tts.errors import http_reason

_MAX_BYTES = MAX_UTTERANCE_S * BYTES_PER_SECOND
# OpenAI answers 400 to audio shorter than 0.1 s; such an utterance holds no words anyway.
_MIN_BYTES = BYTES_PER_SECOND // 10
_MESSAGE_LIMIT = 200


def whisper_language(language: str | None) -> str | None:
    """The ISO 639-1 code Whisper expects for a device language such as "zh-CN" or "en_US"."""
    if not language:
        return None
    code = language.replace("_", "-").split("-")[0].strip().lower()
    return code or None


def describe_error(status: int, body: bytes) -> str:
    """A log line for a non-200 answer, from the OpenAI error body when there is one."""
    try:
        error = orjson.loads(body)["error"]
        kind, code, message = error.get("type"), error.get("code"), error.get("message")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return f"HTTP {status}"
    described = f"HTTP {status} ({kind}/{code})"
    # OpenAI's 401 message quotes part of the key it was given: keep it out of the logs.
    if status != 401 and isinstance(message, str):
        described += f": {message[:_MESSAGE_LIMIT]}"
    return described


def parse_text(body: bytes) -> str:
    """The text of a 200 answer {"text": "..."}; raise ASRError for anything else."""
    try:
        text = orjson.loads(body)["text"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ASRError("transcription answer without a text field", reason="bad_answer") from exc
    if not isinstance(text, str):
        raise ASRError("transcription answer whose text is not a string", reason="bad_answer")
    return text.strip()


class OpenAIASR:
    """ASR provider named "openai": Whisper-compatible /v1/audio/transcriptions, batch."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession,
        model: str = "whisper-1",
        timeout_s: float = 30.0,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/audio/transcriptions"
        self._api_key = api_key
        self._session = session
        self._model = model
        self._timeout_s = timeout_s

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Start buffering an utterance; nothing is sent before finish()."""
        return _OpenAIStream(self, whisper_language(language))

    async def transcribe(self, pcm: bytes, language: str | None) -> str:
        """POST one utterance and return its text; raise ASRError on any failure."""
        form = aiohttp.FormData()
        form.add_field(
            "file", wav_from_pcm(pcm), filename="utterance.wav", content_type="audio/wav"
        )
        form.add_field("model", self._model)
        if language:
            form.add_field("language", language)
        form.add_field("response_format", "json")
        headers = {"Authorization": f"Bearer {self._api_key}"}
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.post(self._url, data=form, headers=headers) as resp,
            ):
                status, body = resp.status, await resp.read()
        except TimeoutError as exc:
            raise ASRError(
                f"no transcription within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            # str(), not repr(): the repr of a response error lists the request headers.
            raise ASRError(
                f"transcription request failed: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc
        if status != 200:
            raise ASRError(
                f"transcription refused: {describe_error(status, body)}", reason=http_reason(status)
            )
        return parse_text(body)


class _OpenAIStream:
    """One utterance, buffered until finish()."""

    def __init__(self, owner: OpenAIASR, language: str | None) -> None:
        self._owner = owner
        self._language = language
        self._pcm = bytearray()
        self._closed = False

    async def feed(self, pcm: bytes) -> None:
        """Buffer `pcm`."""
        if self._closed:
            return
        if len(self._pcm) + len(pcm) > _MAX_BYTES:
            raise ASRError(f"utterance longer than {MAX_UTTERANCE_S} s")
        self._pcm += pcm

    async def finish(self) -> str:
        """Send the utterance and return its text ("" for less than 0.1 s of audio)."""
        if self._closed:
            raise ASRError("the utterance is already finished or cancelled")
        self._closed = True
        pcm = bytes(self._pcm)
        self._pcm.clear()
        if len(pcm) < _MIN_BYTES:
            return ""
        return await self._owner.transcribe(pcm, self._language)

    async def cancel(self) -> None:
        """Drop the buffered audio (a request in flight ends when its task is cancelled)."""
        self._closed = True
        self._pcm.clear()
