"""TTS provider "dashscope": Aliyun DashScope CosyVoice synthesis over its WebSocket, streaming.

One WebSocket and one task per sentence (the wire: asr_tts/dashscope.py). run-task asks for
task "tts", function "SpeechSynthesizer", the model (cosyvoice-v1 by default) and parameters
{text_type: "PlainText", voice, format: "pcm", sample_rate: 24000 (the default Opus
downlink's rate: no resampling), volume 0-100, rate and pitch 0.5-2}; after task-started
one continue-task carries the sentence and finish-task follows at once. The audio comes back
as binary frames of raw s16le mono, each announced by a result-generated event
(sentence-begin / sentence-synthesis / sentence-end, read and otherwise ignored), until
task-finished; task-failed names its error_code and error_message.

`stream()` yields the audio as it arrives, so a caller can play the start of a sentence
before the service has synthesised its end; `synthesize()` (the TTSProvider interface) waits
for all of it. A binary frame need not end on a sample boundary: an odd byte is carried to
the next one. `timeout_s` bounds the connection and task start, and every wait for the next
message after them (the first audio included), not the whole sentence.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator

import aiohttp

from asr_tts import dashscope
from asr_tts.dashscope import DashScopeError
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList

DEFAULT_MODEL = "cosyvoice-v1"
DEFAULT_VOICE = "longxiaochun"
SAMPLE_RATE = 24000
RATIO_RANGE = (0.5, 2.0)  # the documents' range of rate and pitch
# Two minutes of 24 kHz 16-bit audio: a sentence is far shorter; a server that sends more
# is broken, and is not allowed to fill the memory.
MAX_AUDIO_BYTES = 120 * SAMPLE_RATE * 2


def clamp(ratio: float) -> float:
    """`ratio` within RATIO_RANGE; 1.0 when it is not a number."""
    if not math.isfinite(ratio):
        return 1.0
    return max(RATIO_RANGE[0], min(RATIO_RANGE[1], ratio))


class DashScopeTTS:
    """TTS provider named "dashscope": CosyVoice, 24 kHz PCM streamed over a WebSocket."""

    name = "dashscope"

    def __init__(
        self,
        *,
        api_key: str,
        session: aiohttp.ClientSession,
        url: str = dashscope.DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        default_voice: str = DEFAULT_VOICE,
        volume: int = 50,
        timeout_s: float = 10.0,
    ) -> None:
        self._api_key = api_key
        self._session = session
        self._url = url
        self._model = model
        self._default_voice = default_voice
        self._volume = max(0, min(100, volume))
        self._timeout_s = timeout_s

    def _run_task(self, task_id: str, voice: Voice) -> str:
        parameters = {
            "text_type": "PlainText",
            "voice": voice.voice_type or self._default_voice,
            "format": "pcm",
            "sample_rate": SAMPLE_RATE,
            "volume": self._volume,
            "rate": clamp(voice.speed_ratio),
            "pitch": clamp(voice.pitch_ratio),
        }
        return dashscope.run_task(
            task_id,
            task="tts",
            function="SpeechSynthesizer",
            model=self._model,
            parameters=parameters,
        )

    async def voice_list(self) -> VoiceList:
        """Only the configured default voice: the service's own catalogue is not asked."""
        return VoiceList("dashscope", (self._default_voice,), {"*": self._default_voice})

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` whole; TTSError on a failed, malformed, late or silent answer."""
        chunks = [chunk.samples async for chunk in self.stream(text, voice)]
        return Pcm(b"".join(chunks), SAMPLE_RATE)

    async def stream(self, text: str, voice: Voice) -> AsyncGenerator[Pcm, None]:
        """Speak `text`, yielding its audio as it arrives; TTSError when anything fails
        (a task that finishes without audio included).

        Use under contextlib.aclosing when stopping early: closing ends the connection."""
        try:
            ws = await dashscope.connect(self._session, self._url, self._api_key, self._timeout_s)
        except DashScopeError as exc:
            raise TTSError(f"{self.name}: {exc}", reason=exc.reason) from exc
        try:
            async for samples in self._audio(ws, text, voice):
                yield Pcm(samples, SAMPLE_RATE)
        except DashScopeError as exc:
            raise TTSError(f"{self.name}: {exc}", reason=exc.reason) from exc
        except TimeoutError as exc:
            raise TTSError(
                f"{self.name}: no answer within {self._timeout_s} s", reason="timeout"
            ) from exc
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise TTSError(
                f"{self.name}: connection lost: {type(exc).__name__}", reason="connection"
            ) from exc
        finally:
            await dashscope.close(ws)

    async def _audio(
        self, ws: aiohttp.ClientWebSocketResponse, text: str, voice: Voice
    ) -> AsyncGenerator[bytes, None]:
        """Run the task; yield whole samples as the binary frames bring them."""
        task_id = dashscope.new_task_id()
        async with asyncio.timeout(self._timeout_s):
            await ws.send_str(self._run_task(task_id, voice))
            event = self._event(await ws.receive(), task_id)
            if event.name != "task-started":
                raise dashscope.failure(event)
            await ws.send_str(dashscope.continue_task(task_id, text))
            await ws.send_str(dashscope.finish_task(task_id))
        carry, total = b"", 0
        while True:
            async with asyncio.timeout(self._timeout_s):
                msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data = carry + msg.data
                total += len(msg.data)
                if total > MAX_AUDIO_BYTES:
                    raise DashScopeError(
                        f"more than {MAX_AUDIO_BYTES} bytes of audio", reason="bad_answer"
                    )
                whole = len(data) - len(data) % 2
                carry = data[whole:]
                if whole:
                    yield data[:whole]
                continue
            event = self._event(msg, task_id)
            if event.name == "task-finished":
                if not total:
                    raise DashScopeError("the task finished without audio", reason="bad_answer")
                return
            if event.name != "result-generated":
                raise dashscope.failure(event)

    @staticmethod
    def _event(msg: aiohttp.WSMessage, task_id: str) -> dashscope.Event:
        """A text message as an event; DashScopeError for anything else."""
        if msg.type is aiohttp.WSMsgType.TEXT:
            return dashscope.parse_event(msg.data, task_id)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise DashScopeError("the connection closed before task-finished", reason="connection")
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise DashScopeError(f"connection lost: {type(msg.data).__name__}", reason="connection")
        raise DashScopeError(f"unexpected {msg.type.name} message", reason="bad_answer")
