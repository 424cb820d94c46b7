"""TTS provider for Tencent Cloud speech synthesis: the TextToVoice API (API 3.0).

Followed: Tencent's "TextToVoice" reference (`tts.tencentcloudapi.com`, Action TextToVoice,
Version 2019-08-23, default limit 20 requests a second) and its "Signature v3" page. One `POST /`
per sentence, signed with TC3-HMAC-SHA256 (asr_tts/tencent_sign.py) over the headers
`Content-Type: application/json; charset=utf-8` and `Host`; the common parameters travel as
`X-TC-Action`, `X-TC-Version`, `X-TC-Timestamp` and `X-TC-Region`. Body:

    {"Text", "SessionId": <unique, a UUID>, "VoiceType": <int>, "Codec": "pcm",
     "SampleRate": 16000, "Speed": <-2..6>, "Volume": <-10..10>}

Answer: HTTP 200 with `{"Response": {"Audio": <base64>, "SessionId", "RequestId", ...}}`, or
`{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` for any failure (AuthFailure.*,
RequestLimitExceeded, InvalidParameterValue.*, ...), which is a TTSError carrying the code.

Codec "pcm" at 16000 Hz is raw s16le mono (the Speaker resamples to the downlink rate). Speed
is Tencent's scale, not a ratio: the document maps -2, -1, 0, 1, 2, 6 to 0.6, 0.8, 1.0, 1.2,
1.5 and 2.5 times, one decimal allowed; a business's speed_ratio is placed on that scale
between the documented points. VoiceType is a number (e.g. 101001); Voice.voice_type must
then be one. A call takes at most 150 Chinese characters (500 letters): the Speaker's
sentences are at most 120 characters (asr_tts/tts/sentences.py), and a longer text from
another caller is refused by the service (InvalidParameterValue), a TTSError.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
import uuid

import aiohttp
import orjson
from yarl import URL

from asr_tts.errors import Reason, http_reason
from asr_tts.pcm import Pcm
from asr_tts.tencent_sign import tc3_authorization
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.http_body import post_capped

DEFAULT_URL = "https://tts.tencentcloudapi.com/"
SERVICE = "tts"
ACTION = "TextToVoice"
VERSION = "2019-08-23"
CONTENT_TYPE = "application/json; charset=utf-8"
SAMPLE_RATE = 16000
# (speed_ratio, Tencent's Speed) at the points the document names, in increasing order.
SPEED_POINTS = ((0.6, -2.0), (0.8, -1.0), (1.0, 0.0), (1.2, 1.0), (1.5, 2.0), (2.5, 6.0))
VOLUME_RANGE = (-10.0, 10.0)
# Base64 of two minutes of 16 kHz 16-bit audio, with room for the JSON around it.
MAX_BODY_BYTES = 6 * 1024 * 1024
_DETAIL_LIMIT = 200


def tencent_speed(ratio: float) -> float:
    """A speed_ratio on Tencent's Speed scale (one decimal), clamped to its -2..6."""
    if not math.isfinite(ratio):
        return 0.0
    ratio = max(SPEED_POINTS[0][0], min(SPEED_POINTS[-1][0], ratio))
    i = next(i for i, (r, _) in enumerate(SPEED_POINTS) if i and ratio <= r)
    (r0, s0), (r1, s1) = SPEED_POINTS[i - 1], SPEED_POINTS[i]
    return round(s0 + (ratio - r0) / (r1 - r0) * (s1 - s0), 1)


def host_header(url: URL) -> str:
    """The Host header aiohttp would send for `url`, which the signature must name."""
    host = url.raw_host or ""
    return host if url.is_default_port() else f"{host}:{url.port}"


class TencentTTS:
    """TTS provider named "tencent": Tencent Cloud's TextToVoice, 16 kHz PCM."""

    def __init__(
        self,
        *,
        secret_id: str,
        secret_key: str,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        region: str = "ap-guangzhou",
        default_voice: int = 101001,
        volume: float = 0.0,
        timeout_s: float = 30.0,
        name: str = "tencent",
    ) -> None:
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._session = session
        self._url = URL(url)
        self._host = host_header(self._url)
        self._region = region
        self._default_voice = default_voice
        low, high = VOLUME_RANGE
        self._volume = max(low, min(high, volume)) if math.isfinite(volume) else 0.0
        self._timeout_s = timeout_s
        self.name = name

    def _voice_type(self, voice: Voice) -> int:
        """The VoiceType number the business asked for, or the configured one."""
        if voice.voice_type is None:
            return self._default_voice
        try:
            return int(voice.voice_type)
        except ValueError:
            shown = voice.voice_type[:40]
            raise TTSError(f"{self.name}: voice_type {shown!r} is not a VoiceType number") from None

    def _headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        """The signed headers of one call."""
        authorization = tc3_authorization(
            secret_id=self._secret_id,
            secret_key=self._secret_key,
            service=SERVICE,
            host=self._host,
            content_type=CONTENT_TYPE,
            payload=body,
            timestamp=timestamp,
        )
        return {
            "Authorization": authorization,
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": ACTION,
            "X-TC-Version": VERSION,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": self._region,
        }

    async def voice_list(self) -> VoiceList:
        """Only the configured default voice: the service's own catalogue is not asked."""
        return VoiceList("tencent", (str(self._default_voice),), {"*": str(self._default_voice)})

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text`; raise TTSError on a failed, malformed or late answer."""
        session_id = str(uuid.uuid4())
        request = {
            "Text": text,
            "SessionId": session_id,
            "VoiceType": self._voice_type(voice),
            "Codec": "pcm",
            "SampleRate": SAMPLE_RATE,
            "Speed": tencent_speed(voice.speed_ratio),
            "Volume": self._volume,
        }
        body = orjson.dumps(request)
        headers = self._headers(body, int(time.time()))
        status, raw = await post_capped(
            self._session,
            str(self._url),
            body,
            headers,
            timeout_s=self._timeout_s,
            limit=MAX_BODY_BYTES,
            name=self.name,
        )
        return self._audio(status, raw, session_id)

    def _response(self, status: int, raw: bytes) -> dict[str, object]:
        """The `Response` object of an answer, or TTSError naming the error it reports."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        response = doc.get("Response") if isinstance(doc, dict) else None
        if not isinstance(response, dict):
            raise TTSError(
                f"{self.name}: HTTP {status} without a JSON Response object",
                reason=http_reason(status) if status != 200 else "bad_answer",
            )
        error = response.get("Error")
        if isinstance(error, dict):
            code, message = str(error.get("Code")), self._redact(str(error.get("Message") or ""))
            raise TTSError(
                f"{self.name}: HTTP {status} {code}: {message[:_DETAIL_LIMIT]}",
                reason=code_reason(code),
            )
        if status != 200:
            raise TTSError(f"{self.name}: HTTP {status}", reason=http_reason(status))
        return response

    def _audio(self, status: int, raw: bytes, session_id: str) -> Pcm:
        """The PCM in an answer body, or TTSError saying what is wrong with it."""
        response = self._response(status, raw)
        if response.get("SessionId", session_id) != session_id:
            raise TTSError(f"{self.name}: the answer is for another request", reason="bad_answer")
        data = response.get("Audio")
        if not isinstance(data, str) or not data:
            raise TTSError(f"{self.name}: success without audio data", reason="bad_answer")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TTSError(
                f"{self.name}: audio data is not base64: {exc}", reason="bad_answer"
            ) from exc
        if not audio or len(audio) % 2:
            raise TTSError(
                f"{self.name}: {len(audio)} bytes is not 16-bit PCM audio", reason="bad_answer"
            )
        return Pcm(audio, SAMPLE_RATE)

    def _redact(self, message: str) -> str:
        """`message` without the SecretId, should a server echo it (the key never travels)."""
        return message.replace(self._secret_id, "***") if self._secret_id else message


def code_reason(code: str) -> Reason:
    """The reason for an Error.Code: RequestLimitExceeded (and its sub-codes) is a rate limit,
    AuthFailure.* the credentials, anything else a refusal."""
    if code.startswith("RequestLimitExceeded"):
        return "rate_limited"
    if code.startswith("AuthFailure"):
        return "auth"
    return "refused"
