"""A turn: one request to a business service, its events routed to speech or passed through
(docs/protocol.md §2.2), and the speaking of chat answers (§1.5, §1.6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from asr_tts.codec import FrameEncoder
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.speaker import Speaker
from bridges.business import BusinessClient, BusinessTarget, Caller, StreamStats
from metrics.registry import Metrics
from protocol import device
from protocol.audio_format import AudioFormat
from protocol.business import Speak, classify, envelope, error_event, tool_call
from protocol.errors import BusinessError
from relay.device.link import Held, Link
from relay.device.tools import ToolContext, ToolRunner
from relay.logs import Every, cut, dropped_note, ms, story, warn_business
from relay.logsafe import printable
from relay.reach import Reachability

log = logging.getLogger(__name__)

SPEECH_QUEUE_MAX = 64  # chat events waiting to be spoken; a full queue slows the SSE read


@dataclass(frozen=True, slots=True)
class TurnDeps:
    """What every turn needs from the app."""

    client: BusinessClient
    speaker: Speaker
    metrics: Metrics
    stop_margin_s: float = 0.03  # `tts stop` this long after the last frame has played (§1.6)
    log_text_chars: int = 64  # `[log] stt_chars`: recognised text kept in a turn's log line
    warnings: Every = field(default_factory=Every)  # a business's mistakes, once a minute
    reach: Reachability = field(default_factory=Reachability)  # for /readyz


def voice_of(sp: Speak) -> Voice:
    """The asr_tts voice for a chat event's voice fields (§2.2)."""
    return Voice(
        provider=sp.tts_provider,
        voice_type=sp.voice_type,
        speed_ratio=sp.speed_ratio or 1.0,
        pitch_ratio=sp.pitch_ratio or 1.0,
    )


class Speech:
    """Speaks one answer: `tts start`, then per sentence paced frames and a caption timed to
    when they play, then `tts stop` once the last frame has played (docs/protocol.md §1.6).
    Holds the session's speech lock throughout."""

    def __init__(
        self,
        link: Link,
        deps: TurnDeps,
        fmt: AudioFormat,
        lock: asyncio.Lock,
        speech_end: float | None = None,
    ) -> None:
        self._link = link
        self._speech_end = speech_end  # monotonic end of the user's speech, if any
        self._deps = deps
        self._fmt = fmt
        self._lock = lock
        self.queue: asyncio.Queue[Speak | None] = asyncio.Queue(SPEECH_QUEUE_MAX)
        self.started = False  # `tts start` went out: an abort must send `tts stop` aborted
        self.frames = 0  # audio frames handed to the link, for the turn's log line

    async def run(self) -> None:
        """Consume the queue until None, speaking each answer in order."""
        link, sid = self._link, self._link.session_id
        async with self._lock:
            # One encoder per answer: Opus state spans its frames, and idle devices hold none.
            encoder = FrameEncoder(self._fmt)
            link.start_answer()
            link.send_json(device.tts_start(sid), "tts")
            self.started = True
            try:
                while (sp := await self.queue.get()) is not None:
                    await self._speak(sp, encoder)
                # Clients flush their playback on `tts stop`: it waits for the last frame
                # to play, or they lose the end of every answer (§1.6).
                await link.played(self._deps.stop_margin_s)
            except BaseException as exc:
                # Cut off (the canceller sends the aborted stop) or failed: the captions
                # held for audio that will not play must not follow.
                link.drop_held()
                if isinstance(exc, Exception):
                    # Whatever failed, the device must not stay in its speaking state (§2.6).
                    link.send_json(device.tts_stop(sid, aborted=True), "tts")
                    self.started = False
                raise
            link.send_json(device.tts_stop(sid, aborted=False), "tts")
            self.started = False

    async def _speak(self, sp: Speak, encoder: FrameEncoder) -> None:
        link, sid = self._link, self._link.session_id
        voice = voice_of(sp)
        segments = self._deps.speaker.segments(sp.answer, voice, encoder)
        # The answer's emotion and each caption go out as their audio starts playing (§1.6,
        # §2.2): the frames before them may still be playing when they are written.
        held: list[tuple[bytes, str]] = []
        if sp.emotion is not None:
            held.append((device.llm(sid, sp.emotion), "llm"))
        try:
            async with contextlib.aclosing(segments) as it:
                async for text, frames, _whole in it:
                    if text is not None:  # None: more frames of the sentence before
                        held.append((device.sentence_start(sid, text), "tts"))
                    group = Held(tuple(held)) if held else None
                    held = []
                    if self._speech_end is not None and frames:
                        self.frames += 1
                        await link.paced_audio(frames[:1], group)
                        delay = time.monotonic() - self._speech_end
                        self._deps.metrics.speech_to_audio.observe(delay)
                        self._speech_end = None
                        frames, group = frames[1:], None
                    self.frames += len(frames)
                    await link.paced_audio(frames, group)
            if held:  # an answer with nothing to say still shows its emotion
                await link.paced_audio((), Held(tuple(held)))
        except TTSError as exc:
            # The rest of this answer cannot be heard; later answers may still be.
            self._deps.metrics.tts_errors.inc()
            provider = self._deps.speaker.provider_for(voice).name
            self._deps.metrics.provider_errors.labels("tts", provider, exc.reason).inc()
            log.warning("tts failed for session %s: %s", sid, printable(exc))


class Turn:
    """One business request and everything the device hears because of it."""

    def __init__(
        self,
        link: Link,
        deps: TurnDeps,
        fmt: AudioFormat,
        speech_lock: asyncio.Lock,
        *,
        request_type: str,
        always_stop: bool,
        speech_end: float | None = None,
        tools: ToolContext | None = None,
        text: str | None = None,
    ) -> None:
        self._link = link
        self._deps = deps
        self._fmt = fmt
        self._lock = speech_lock
        self.request_type = request_type
        self._always_stop = always_stop  # chat turns end with `tts stop` even when silent
        self._speech_end = speech_end
        self._text = text  # what the user said, for the log line
        self._requests: list[StreamStats] = []  # this turn's business requests, for the log
        self.speech: Speech | None = None
        self._tools = tools  # the device's tools, for a business with device_tools (§3.3)
        self._group: asyncio.TaskGroup | None = None
        self._speech_task: asyncio.Task[None] | None = None
        self._runner: ToolRunner | None = None
        self._runner_task: asyncio.Task[None] | None = None

    async def speak(self, sp: Speak) -> None:
        """Speak directly, with no business request (`text_response`, pushed speech)."""
        speech = self._speech()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(speech.run())
            await speech.queue.put(sp)
            await speech.queue.put(None)

    async def run(
        self, target: BusinessTarget, body: bytes, caller: Caller, expected_session: str
    ) -> None:
        """POST `body` to `target` for `caller` and route every event of the answer
        (§2.1–§2.7), and of the answers to its tool calls' results (§3.3); one log line
        tells how it went."""
        try:
            await self._answer(target, body, caller, expected_session)
        finally:
            self._tell(target, caller)

    async def _answer(
        self, target: BusinessTarget, body: bytes, caller: Caller, expected_session: str
    ) -> None:
        link = self._link
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            await self._request(target, body, caller, expected_session)
            if self._runner is not None and self._runner_task is not None:
                self._runner.close()
                await self._runner_task  # the calls still queued, and what their results ask
            if self._speech_task is not None:
                await self._speech().queue.put(None)
            elif self._always_stop:
                link.send_json(device.tts_stop(link.session_id, aborted=False), "tts")

    @property
    def tools_pending(self) -> bool:
        """Tool calls of this turn wait or run (an abort cancels them, §3.3)."""
        return self._runner is not None and self._runner.pending

    async def _request(
        self,
        target: BusinessTarget,
        body: bytes,
        caller: Caller,
        expected_session: str,
        request_type: str | None = None,
    ) -> None:
        """One business request of this turn (the first, or a `tool_result`): its events
        spoken, passed through, or run as tool calls."""
        kind = request_type or self.request_type
        deps, link = self._deps, self._link
        stats = StreamStats()
        self._requests.append(stats)
        try:
            events = deps.client.stream(target, body, caller, expected_session, stats)
            async with contextlib.aclosing(events) as it:
                async for event in it:
                    if self._tools is not None and target.device_tools:
                        call = tool_call(event, expected_session)
                        if call is not None:
                            self._tool_runner(target, caller, expected_session).submit(call)
                            continue
                    sp = classify(event)
                    if sp is None:
                        await link.room()  # a simulate client reads at its own pace
                        link.send_json(self._envelope(event.raw, kind), "custom")
                        continue
                    if self._speech_task is None:
                        self._speech_task = self._task(self._speech().run())
                    await self._speech().queue.put(sp)
        finally:
            self._record(target, stats)
            warn_business(deps.warnings, target, expected_session, stats)
            deps.reach.saw(target, stats)
        if (note := dropped_note(target, expected_session, stats)) is not None:
            link.diagnose(note)
        if (code := stats.failure) is not None:
            link.send_json(self._envelope(error_event(link.session_id, code), kind), "custom")

    def _tool_runner(self, target: BusinessTarget, caller: Caller, expected: str) -> ToolRunner:
        if self._runner is None:
            assert self._tools is not None

            async def post(result: bytes) -> None:
                await self._request(target, result, caller, expected, "tool_result")

            self._runner = ToolRunner(self._tools, post)
            self._runner_task = self._task(self._runner.run())
        return self._runner

    def _task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._group is not None
        return self._group.create_task(coro)

    def fail(self, code: BusinessError) -> None:
        """Tell the device this turn could not start (e.g. no business configured)."""
        self._link.send_json(self._envelope(error_event(self._link.session_id, code)), "custom")
        if self._always_stop:
            self._link.send_json(device.tts_stop(self._link.session_id, aborted=False), "tts")

    def _speech(self) -> Speech:
        if self.speech is None:
            self.speech = Speech(self._link, self._deps, self._fmt, self._lock, self._speech_end)
        return self.speech

    def _envelope(self, event_raw: bytes, request_type: str | None = None) -> bytes:
        ts = time.time_ns() // 1_000_000
        kind = request_type or self.request_type
        return envelope(self._link.session_id, kind, event_raw, ts)

    def _tell(self, target: BusinessTarget, caller: Caller) -> None:
        # The first request's answer; `requests` counts the tool results posted after it.
        stats = self._requests[0] if self._requests else StreamStats()
        story(
            log,
            "turn",
            device=caller.device_id,
            session=caller.session_id,
            kind=self.request_type,
            text=None if self._text is None else cut(self._text, self._deps.log_text_chars),
            business=target.name,
            outcome=stats.outcome.value,
            status=stats.status,
            events=stats.events,
            first_event_ms=ms(stats.first_event_s),
            total_ms=ms(stats.total_s),
            frames=self.speech.frames if self.speech is not None else 0,
            requests=len(self._requests),
        )

    def _record(self, target: BusinessTarget, stats: StreamStats) -> None:
        m = self._deps.metrics.business(target.name, self._link.source)
        m.requests[stats.outcome.value].inc()
        m.duration.observe(stats.total_s)
        if stats.first_event_s is not None:
            m.first_event.observe(stats.first_event_s)
        if stats.foreign_dropped:
            m.session_mismatch.inc(stats.foreign_dropped)
        if stats.bad_events:
            m.bad_events.inc(stats.bad_events)
