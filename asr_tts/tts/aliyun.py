"""TTS provider for Aliyun NLS (智能语音交互) speech synthesis over its RESTful streaming API.

Followed: Aliyun's "speech synthesis RESTful API" page. One `POST
https://nls-gateway-cn-shanghai.aliyuncs.com/stream/v1/tts` per sentence, `Content-Type:
application/json`, body

    {"appkey", "token", "text", "format": "pcm", "sample_rate", "voice",
     "volume": 0..100, "speech_rate": -500..500, "pitch_rate": -500..500}

The answer streams the audio as it is synthesised (chunked; the page says to check the
Content-Type: `audio/mpeg` whatever the format, here raw s16le mono at `sample_rate`). A failure
is JSON instead: `{"task_id", "result": "", "status": <code>, "message"}`; status 40000001 means
the token is invalid or expired (the cached token is dropped and the sentence tried once more
with a fresh one), 40000005 too many requests.

`stream()` yields the audio as the chunked body brings it, so the Speaker can play the start
of an answer's first sentence before the gateway has synthesised its end; `synthesize()` joins
it. A chunk need not end on a sample boundary: an odd byte is carried to the next one.
`timeout_s` bounds the request up to the answer's headers and every wait for the next chunk
after them, not the whole sentence.

Why the RESTful one and not the WebSocket SpeechSynthesizer: both stream the audio of one
text, but the WebSocket's events add a handshake and a StartSynthesis round trip per sentence
where the HTTP request rides a kept-alive connection of the shared session; the token, appkey
and parameters are the same.

Length: the page limits one request to 300 characters and silently truncates the rest, so a
longer sentence goes as several requests (cut after the last punctuation or space that keeps a
piece within the limit), their audio joined. A character outside ASCII is counted twice: the
page does not say how it counts Chinese, and a piece too short costs one more request where a
piece too long would lose words.

Rates: speech_rate and pitch_rate map a ratio r (0.5 to 2, clamped) as the page's table does:
-500, 0, 500 are 0.5x, 1x, 2x; between, (1 - 1/r) / 0.002 below 1 and (1 - 1/r) / 0.001 above.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from typing import NoReturn

import aiohttp
import orjson

from asr_tts.errors import http_reason
from asr_tts.nls_token import TOKEN_REJECTED, NLSTokens, TokenError, nls_reason
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.http_body import read_capped

DEFAULT_URL = "https://nls-gateway-cn-shanghai.aliyuncs.com/stream/v1/tts"
SAMPLE_RATE = 16000
RATIO_RANGE = (0.5, 2.0)
MAX_BODY_BYTES = 8 * 1024 * 1024  # two minutes of 16 kHz s16le and more
MAX_TEXT = 300
_BREAKS = frozenset("，。！？；：、,.!?;: \n\t")
_DETAIL_LIMIT = 200


def rate_value(ratio: float) -> int:
    """A speed or pitch ratio as NLS's -500..500 scale (1.0 and non-numbers are 0)."""
    if not math.isfinite(ratio):
        return 0
    r = max(RATIO_RANGE[0], min(RATIO_RANGE[1], ratio))
    scale = 0.002 if r < 1 else 0.001
    return max(-500, min(500, round((1 - 1 / r) / scale)))


def text_pieces(text: str, limit: int = MAX_TEXT) -> list[str]:
    """`text` in pieces within `limit` (non-ASCII characters count 2), each cut after the last
    break that fits, else at the limit."""
    pieces: list[str] = []
    while text:
        weight, end, cut = 0, 0, 0
        for i, ch in enumerate(text):
            weight += 1 if ch.isascii() else 2
            if weight > limit:
                break
            end = i + 1
            if ch in _BREAKS:
                cut = end
        else:
            pieces.append(text)
            break
        pieces.append(text[: cut or end])
        text = text[cut or end :]
    return pieces


class _Refused(TTSError):
    """The gateway's JSON failure, with its status."""

    def __init__(self, name: str, http: int, status: object, message: str) -> None:
        super().__init__(
            f"{name}: HTTP {http} status {status}: {message[:_DETAIL_LIMIT]}",
            reason=nls_reason(status) if status is not None else http_reason(http),
        )
        self.status = status


class AliyunTTS:
    """TTS provider named "aliyun": NLS RESTful streaming synthesis, 16 kHz PCM."""

    name = "aliyun"

    def __init__(
        self,
        *,
        appkey: str,
        tokens: NLSTokens,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        default_voice: str = "xiaoyun",
        volume: int = 50,
        sample_rate: int = SAMPLE_RATE,
        timeout_s: float = 30.0,
    ) -> None:
        self._appkey = appkey
        self._tokens = tokens
        self._session = session
        self._url = url
        self._default_voice = default_voice
        self._volume = max(0, min(100, volume))
        self._sample_rate = sample_rate
        self._timeout_s = timeout_s

    async def voice_list(self) -> VoiceList:
        """Only the configured default voice: the service's own catalogue is not asked."""
        return VoiceList("aliyun", (self._default_voice,), {"*": self._default_voice})

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` whole (in pieces within the gateway's limit); TTSError on any failure."""
        chunks = [chunk.samples async for chunk in self.stream(text, voice)]
        return Pcm(b"".join(chunks), self._sample_rate)

    async def stream(self, text: str, voice: Voice) -> AsyncGenerator[Pcm, None]:
        """Speak `text`, yielding its audio as the answers' bodies bring it; TTSError on any
        failure (an answer without audio included).

        Use under contextlib.aclosing when stopping early: closing drops the connection."""
        for piece in text_pieces(text):
            async for samples in self._piece(piece, voice):
                yield Pcm(samples, self._sample_rate)

    async def _piece(self, text: str, voice: Voice) -> AsyncGenerator[bytes, None]:
        """One request; a refused token is fetched again once (a refusal comes before any
        audio: it is the JSON answer instead of the audio)."""
        try:
            async for samples in self._attempt(text, voice):
                yield samples
            return
        except _Refused as exc:
            if exc.status != TOKEN_REJECTED:
                raise
        async for samples in self._attempt(text, voice):
            yield samples

    async def _attempt(self, text: str, voice: Voice) -> AsyncGenerator[bytes, None]:
        """One request with the current token, its audio yielded as it arrives."""
        try:
            token = await self._tokens.get()
        except TokenError as exc:
            raise TTSError(f"{self.name}: no token: {exc}", reason=exc.reason) from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._session.post(
                    self._url,
                    data=orjson.dumps(self._body(text, voice, token)),
                    headers={"Content-Type": "application/json"},
                )
            async with resp:
                if resp.status != 200 or not resp.content_type.startswith("audio/"):
                    async with asyncio.timeout(self._timeout_s):
                        raw = await read_capped(resp, MAX_BODY_BYTES)
                    self._refused(resp.status, raw, token)
                async for samples in self._samples(resp):
                    yield samples
        except TimeoutError as exc:
            raise TTSError(
                f"{self.name}: no answer within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TTSError(
                f"{self.name}: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc

    def _body(self, text: str, voice: Voice, token: str) -> dict[str, object]:
        """The synthesis request's JSON body."""
        return {
            "appkey": self._appkey,
            "token": token,
            "text": text,
            "format": "pcm",
            "sample_rate": self._sample_rate,
            "voice": voice.voice_type or self._default_voice,
            "volume": self._volume,
            "speech_rate": rate_value(voice.speed_ratio),
            "pitch_rate": rate_value(voice.pitch_ratio),
        }

    async def _samples(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        """Whole samples as the audio body brings them (an odd byte waits for the next
        chunk); `timeout_s` bounds each wait, not the whole body."""
        if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
            raise TTSError(
                f"answer of {resp.content_length} bytes exceeds {MAX_BODY_BYTES}",
                reason="bad_answer",
            )
        carry, total = b"", 0
        while True:
            async with asyncio.timeout(self._timeout_s):
                chunk = await resp.content.readany()
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise TTSError(f"answer exceeds {MAX_BODY_BYTES} bytes", reason="bad_answer")
            data = carry + chunk
            whole = len(data) - len(data) % 2
            carry = data[whole:]
            if whole:
                yield data[:whole]
        if not total or carry:
            raise TTSError(
                f"{self.name}: {total} bytes is not 16-bit PCM audio", reason="bad_answer"
            )

    def _refused(self, status: int, raw: bytes, token: str) -> NoReturn:
        """Raise the failure an answer without audio reports (its token dropped if refused)."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise TTSError(
                f"{self.name}: HTTP {status} without audio or a JSON error",
                reason=http_reason(status),
            )
        code, message = doc.get("status"), str(doc.get("message") or "").replace(token, "***")
        if code == TOKEN_REJECTED:
            self._tokens.invalidate(token)
        raise _Refused(self.name, status, code, message)
