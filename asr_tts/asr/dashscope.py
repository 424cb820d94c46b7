"""The "dashscope" ASR provider: Aliyun DashScope Paraformer real-time recognition, streaming.

One WebSocket and one task per utterance (the wire: asr_tts/dashscope.py). run-task asks for
task "asr", function "recognition", the model (paraformer-realtime-v2 by default) and
parameters {format: "pcm", sample_rate: 16000, and language_hints when a language is known
(a v2 parameter)}; audio goes out as binary frames of raw s16le PCM only after task-started
(the documents: audio sent earlier is an error), in packets of about 100 ms as they advise;
finish-task ends the audio.

result-generated events carry payload.output.sentence {text, sentence_end, heartbeat}: the
recogniser may cut one of our utterances into several sentences, so the text is every ended
sentence joined, plus the last unended one should task-finished come before its end.
Heartbeat results carry nothing and are skipped. task-failed (header.error_code and
error_message, e.g. a throttling code when the account's rate is exceeded) is an ASRError
naming the code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from asr_tts import dashscope
from asr_tts.asr.base import BYTES_PER_SECOND, SAMPLE_RATE, ASRError, ASRStream
from asr_tts.asr.socket_stream import SocketStream
from asr_tts.dashscope import DashScopeError

DEFAULT_MODEL = "paraformer-realtime-v2"


def language_hints(language: str | None) -> list[str]:
    """Paraformer's language_hints for a relay language ("zh-CN" -> ["zh"]); [] = its own."""
    code = (language or "").split("-")[0].split("_")[0].lower()
    return [code] if code and code != "auto" else []


class DashScopeASR:
    """ASR provider named "dashscope": Paraformer real-time over one WebSocket per utterance."""

    name = "dashscope"

    def __init__(
        self,
        *,
        api_key: str,
        session: aiohttp.ClientSession,
        url: str = dashscope.DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        timeout_s: float = 10.0,
        packet_ms: int = 100,
    ) -> None:
        self._api_key = api_key
        self._session = session
        self._url = url
        self._model = model
        self._timeout_s = timeout_s
        # 0 sends every feed() at once.
        self._packet_bytes = BYTES_PER_SECOND * packet_ms // 1000

    def _parameters(self, language: str | None) -> dict[str, object]:
        params: dict[str, object] = {"format": "pcm", "sample_rate": SAMPLE_RATE}
        if hints := language_hints(language):
            params["language_hints"] = hints
        return params

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Connect, start the task and wait for task-started; ASRError if any of it fails."""
        try:
            ws = await dashscope.connect(self._session, self._url, self._api_key, self._timeout_s)
        except DashScopeError as exc:
            raise ASRError(f"DashScope: {exc}", reason=exc.reason) from exc
        task_id = dashscope.new_task_id()
        stream = _DashScopeStream(ws, task_id, self._timeout_s, self._packet_bytes)
        start = dashscope.run_task(
            task_id,
            task="asr",
            function="recognition",
            model=self._model,
            parameters=self._parameters(language),
        )
        try:
            await stream.start(start)
        except BaseException:
            await stream.cancel()
            raise
        return stream


class _DashScopeStream(SocketStream):
    """One utterance's task; a reader task collects its sentences until task-finished."""

    vendor = "DashScope"

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, task_id: str, timeout_s: float, packet: int
    ) -> None:
        super().__init__(ws, timeout_s, packet)
        self._task_id = task_id
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sentences: list[str] = []
        self._partial = ""
        self._start_reader()

    async def start(self, run_task: str) -> None:
        """Send run-task and wait for task-started."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.send(run_task)
                await asyncio.shield(self._started)
        except TimeoutError as exc:
            raise ASRError(
                f"DashScope: no task-started within {self._timeout_s} s", reason="timeout"
            ) from exc

    async def _send_rest(self) -> None:
        if self._pending:
            await self.send(self._take())
        await self.send(dashscope.finish_task(self._task_id))

    def _futures(self) -> tuple[asyncio.Future[Any], ...]:
        return (self._started, self._final)

    async def _close_socket(self) -> None:
        await dashscope.close(self._ws)

    async def _read(self) -> None:
        """Settle `_started` and `_final` from the server's events, or with the first failure."""
        try:
            text = await self._receive_final()
        except DashScopeError as exc:
            self._settle(ASRError(f"DashScope: {exc}", reason=exc.reason))
        else:
            self._settle(text)

    def _settle(self, outcome: str | ASRError) -> None:
        if isinstance(outcome, str):
            if not self._final.done():
                self._final.set_result(outcome)
            return
        for future in (self._started, self._final):
            if not future.done():
                future.set_exception(outcome)

    async def _receive_final(self) -> str:
        """Read events until task-finished; the utterance's text."""
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise DashScopeError(f"unexpected {msg.type.name} message", reason="bad_answer")
            event = dashscope.parse_event(msg.data, self._task_id)
            if event.name == "task-started" and not self._started.done():
                self._started.set_result(None)
            elif event.name == "result-generated" and self._started.done():
                self._take_sentence(event.output.get("sentence"))
            elif event.name == "task-finished" and self._started.done():
                return "".join([*self._sentences, self._partial])
            else:
                raise dashscope.failure(event)
        raise DashScopeError("the connection closed before task-finished", reason="connection")

    def _take_sentence(self, sentence: object) -> None:
        if not isinstance(sentence, dict) or sentence.get("heartbeat") is True:
            return
        text = sentence.get("text")
        text = text if isinstance(text, str) else ""
        if sentence.get("sentence_end") is True:
            self._sentences.append(text)
            self._partial = ""
        else:
            self._partial = text
