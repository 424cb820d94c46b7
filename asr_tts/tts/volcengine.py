"""TTS provider for Volcengine (火山引擎, "huoshan") speech synthesis over its HTTP API.

Followed: Volcengine's "HTTP 非流式" TTS document (`https://openspeech.bytedance.com/api/v1/tts`,
the same parameters as its `ws_binary` WebSocket), its official `tts_http_demo.py`, and the peer
xiaozhi-esp32-server's `doubao.py`. One `POST` per sentence, `operation: "query"` (the only one
HTTP supports); header `Authorization: Bearer;<token>` (a semicolon, no space); body

    {"app": {"appid", "token", "cluster"}, "user": {"uid"},
     "audio": {"voice_type", "encoding", "rate", "speed_ratio", "volume_ratio", "pitch_ratio"},
     "request": {"reqid": <unique, a UUID>, "text", "text_type": "plain", "operation": "query"}}

Answer: JSON `{"reqid", "code", "message", "sequence", "data": <base64 audio>, "addition":
{"duration": "<ms>"}}`; code 3000 is success, others (3001 invalid request, 3003 concurrency,
3005 busy, 3010 text too long, 3011 invalid text, 3030 timeout, 3050 no such voice, ...) are
failures. Rejected credentials come back with an HTTP error status (403 seen in the field)
and the same JSON shape, so the body of a non-200 answer is read for its code too.

Encoding: `pcm` at `rate` 24000, the document's defaults: raw s16le mono with nothing to parse,
at the rate of the default Opus downlink (no resampling). WAV would add a header for nothing
(and the document notes WAV cannot stream); should a server send WAV anyway (it starts with
RIFF), it is parsed with pcm_from_wav. Ranges clamped to the classic voices' documented ones:
speed_ratio 0.2-3, volume_ratio and pitch_ratio 0.1-3 (the big-model voices accept a narrower
speed range and ignore pitch; the service applies its own limits).
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid

import aiohttp
import orjson

from asr_tts.codec import pcm_from_wav
from asr_tts.errors import Reason, http_reason
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.http_body import post_capped

DEFAULT_URL = "https://openspeech.bytedance.com/api/v1/tts"
SUCCESS = 3000
SAMPLE_RATE = 24000
SPEED_RANGE = (0.2, 3.0)
VOLUME_RANGE = PITCH_RANGE = (0.1, 3.0)
# Base64 of two minutes of 24 kHz 16-bit audio, with room for the JSON around it.
MAX_BODY_BYTES = 8 * 1024 * 1024
_DETAIL_LIMIT = 200


def clamp_ratio(ratio: float, bounds: tuple[float, float]) -> float:
    """`ratio` within `bounds`; 1.0 when it is not a number."""
    if not math.isfinite(ratio):
        return 1.0
    low, high = bounds
    return max(low, min(high, ratio))


class VolcengineTTS:
    """TTS provider named "huoshan" by default: Volcengine's one-shot HTTP TTS, 24 kHz PCM."""

    def __init__(
        self,
        *,
        appid: str,
        token: str,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        cluster: str = "volcano_tts",
        default_voice: str = "BV001_streaming",
        volume_ratio: float = 1.0,
        uid: str = "voice-relay",
        timeout_s: float = 30.0,
        name: str = "huoshan",
    ) -> None:
        self._appid = appid
        self._token = token
        self._session = session
        self._url = url
        self._cluster = cluster
        self._default_voice = default_voice
        self._volume_ratio = clamp_ratio(volume_ratio, VOLUME_RANGE)
        self._uid = uid  # any non-empty string; the service logs it for tracing, no device ids
        self._timeout_s = timeout_s
        self.name = name

    def _request_body(self, text: str, voice: Voice, reqid: str) -> dict[str, object]:
        """The JSON request for one sentence."""
        return {
            # The document calls app.token a placeholder ("any non-empty string"); the header
            # authenticates. The demo and peer servers send the real token in both places.
            "app": {"appid": self._appid, "token": self._token, "cluster": self._cluster},
            "user": {"uid": self._uid},
            "audio": {
                "voice_type": voice.voice_type or self._default_voice,
                "encoding": "pcm",
                "rate": SAMPLE_RATE,
                "speed_ratio": clamp_ratio(voice.speed_ratio, SPEED_RANGE),
                "volume_ratio": self._volume_ratio,
                "pitch_ratio": clamp_ratio(voice.pitch_ratio, PITCH_RANGE),
            },
            "request": {
                "reqid": reqid,
                "text": text,
                "text_type": "plain",
                "operation": "query",
            },
        }

    async def voice_list(self) -> VoiceList:
        """Only the configured default voice: the service's own catalogue is not asked."""
        return VoiceList("volcengine", (self._default_voice,), {"*": self._default_voice})

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text`; raise TTSError on a failed, malformed or late answer."""
        reqid = str(uuid.uuid4())
        body = orjson.dumps(self._request_body(text, voice, reqid))
        headers = {"Authorization": f"Bearer;{self._token}", "Content-Type": "application/json"}
        status, raw = await post_capped(
            self._session,
            self._url,
            body,
            headers,
            timeout_s=self._timeout_s,
            limit=MAX_BODY_BYTES,
            name=self.name,
        )
        return self._audio(status, raw, reqid)

    def _audio(self, status: int, raw: bytes, reqid: str) -> Pcm:
        """The PCM in an answer body, or TTSError saying what is wrong with it."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise TTSError(
                f"{self.name}: HTTP {status} with a body that is not a JSON object",
                reason=http_reason(status) if status != 200 else "bad_answer",
            )
        code, message = doc.get("code"), self._redact(str(doc.get("message") or ""))
        if status != 200 or code != SUCCESS:
            raise TTSError(
                f"{self.name}: HTTP {status} code {code}: {message[:_DETAIL_LIMIT]}",
                reason=code_reason(status, code),
            )
        if doc.get("reqid", reqid) != reqid:
            raise TTSError(f"{self.name}: the answer is for another request", reason="bad_answer")
        data = doc.get("data")
        if not isinstance(data, str) or not data:
            raise TTSError(f"{self.name}: success without audio data", reason="bad_answer")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TTSError(
                f"{self.name}: audio data is not base64: {exc}", reason="bad_answer"
            ) from exc
        if audio[:4] == b"RIFF":
            try:
                return pcm_from_wav(audio)
            except ValueError as exc:
                raise TTSError(
                    f"{self.name}: unusable WAV audio: {exc}", reason="bad_answer"
                ) from exc
        if not audio or len(audio) % 2:
            raise TTSError(
                f"{self.name}: {len(audio)} bytes is not 16-bit PCM audio", reason="bad_answer"
            )
        return Pcm(audio, SAMPLE_RATE)

    def _redact(self, message: str) -> str:
        """`message` without the token, should a server echo it."""
        return message.replace(self._token, "***") if self._token else message


def code_reason(status: int, code: object) -> Reason:
    """The reason for a failed answer: 3003 (concurrency over the limit) is a rate limit,
    3030 the service's own timeout, other codes a refusal (the HTTP status when no code)."""
    if code == 3003:
        return "rate_limited"
    if code == 3030:
        return "timeout"
    return http_reason(status) if status != 200 else "refused"
