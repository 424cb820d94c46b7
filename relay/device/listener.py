"""The relay hears (docs/protocol.md §1.3): device audio → decode → VAD → ASR → text.

Decoding and VAD of every stream run in batched executor jobs (relay/device/audio_batcher.py),
one job in flight per stream, so the loop stays free and ONNX calls are shared across streams.

Early recognition (auto and realtime modes, a batch recogniser such as Whisper): at the first
pause the VAD reports (`[vad] early_silence_s`) the audio so far is handed to the recogniser;
when the utterance then ends without more speech that text is the utterance's, ready sooner
(`stt` is still sent when the VAD ends the utterance); when speech resumes it is discarded and
the whole utterance is decoded at its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from aioutil import cancel_and_wait
from asr_tts.asr.base import ASRError, ASRProvider, ASRStream, EarlyStream
from asr_tts.segmenter import Segmenter, SegmenterConfig, SegmentEvent
from asr_tts.uplink import UplinkDecoder
from asr_tts.vad import SileroModel, VadStream
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from protocol.device import ListenMode
from protocol.session_state import AudioVerdict, ListenAction, ListenState
from relay.device.audio_batcher import AudioBatcher, AudioJob
from relay.logsafe import printable

log = logging.getLogger(__name__)

WINDOW_S = VadStream.WINDOW_S


@dataclass(frozen=True, slots=True)
class VoiceDeps:
    """What every listener needs from the app."""

    asr: ASRProvider
    vad: SileroModel
    segmenter: SegmenterConfig
    batcher: AudioBatcher
    metrics: Metrics
    max_pending_packets: int = 100  # ~6 s of 60 ms frames waiting to be processed
    # auto and realtime modes, no utterance in progress: audio that waited longer than this
    # for decode + VAD is dropped (speech or a barge-in found seconds late is worth nothing)
    max_late_s: float = 0.3
    language: str | None = None  # what the ASR is asked for; None: its default

    def speaking(self, language: str) -> VoiceDeps:
        """These dependencies for a device that speaks `language` (empty: the default)."""
        return replace(self, language=language) if language else self


TextCallback = Callable[[str, float], None]  # (recognised text, monotonic end of speech)


class _Failed:
    """The rest of an utterance whose provider failed, the error already counted and logged:
    it takes the audio and hears nothing, so the turn ends with `stt ""` when the utterance
    does (push-to-talk at `listen stop`), once, and no new stream is opened before then."""

    async def feed(self, pcm: bytes) -> None:
        return None

    async def finish(self) -> str:
        return ""

    async def cancel(self) -> None:
        return None


_FAILED = _Failed()


class Listener:
    """One device's microphone: one utterance at a time streamed to ASR (§1.3 modes)."""

    def __init__(
        self,
        deps: VoiceDeps,
        fmt: AudioFormat,
        *,
        on_speech: Callable[[], None],
        on_text: TextCallback,
        device_id: str,
    ) -> None:
        self._deps = deps
        self._decoder = UplinkDecoder(fmt)
        self._vad = VadStream(deps.vad)
        self._segmenter = Segmenter(deps.segmenter)
        self._carry = bytearray()
        self._on_speech = on_speech
        self._on_text = on_text
        self._device_id = device_id
        self.state = ListenState()  # the listen mode and a manual stop waiting (§1.3)
        self._pending: deque[tuple[float, bytes]] = deque()  # (loop time it arrived, packet)
        self._pump: asyncio.Task[None] | None = None
        self._aborts = 0  # counts `cancel`s: a batch job submitted before one is not heard
        pre = deps.segmenter.pre_roll_s + deps.segmenter.min_speech_s
        self._ring: deque[bytes] = deque(maxlen=max(1, round(pre / WINDOW_S) + 1))
        self._stream: ASRStream | None = None
        self._opening: asyncio.Task[ASRStream] | None = None
        self._utterance_s = 0.0
        self._early = False  # the utterance's stream holds an early decode (see start_early)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_at = 0.0  # when a manual `listen stop` waiting for the backlog came

    @property
    def capturing(self) -> bool:
        """An utterance is being captured right now."""
        return self._stream is not None or self._opening is not None

    @property
    def mode(self) -> ListenMode | None:
        """The listen mode in force, None when not listening."""
        return self.state.mode

    def start(self, mode: ListenMode) -> None:
        """`listen start`: (re)arm the microphone in `mode`."""
        for action in self.state.start(mode, capturing=self.capturing):
            if action is ListenAction.FINISH_STOP:  # a new turn before the last stop's backlog
                self._end_capture(self._stop_at)
            elif action is ListenAction.ARM:  # KEEP: the utterance in progress goes on
                self._segmenter.reset()
                self._ring.clear()

    def stop(self) -> None:
        """`listen stop`: in manual mode the utterance ends here, once the audio received
        before the stop has been processed; otherwise stop listening."""
        now = time.monotonic()
        if self.state.stop(audio_pending=self._pump is not None) is ListenAction.DEFER_STOP:
            self._stop_at = now  # the pump ends the utterance when its backlog is done
            return
        self._end_capture(now)

    def _end_capture(self, t_end: float) -> None:
        tail = self._take_carry()
        if self.capturing:
            self._end_early(hit=False)  # audio the VAD has not seen may hold more speech
            self._end_utterance(t_end, tail)

    def _take_carry(self) -> bytes:
        """At a stop: the audio decoded but short of a whole VAD window (up to 32 ms), taken
        out, when no batch job is using it. It is the end of the utterance the stop ends (in
        push-to-talk the last of the speech), and must not begin the next one."""
        if self._pump is not None:  # a job of the backlog runs: its audio goes on
            return b""
        tail = bytes(self._carry)
        self._carry.clear()
        return tail

    def feed(self, packet: bytes) -> bool:
        """One uplink audio packet; False when it was dropped (not listening, backlog)."""
        if self.state.audio(speaking=False) is not AudioVerdict.FEED:
            return False
        if len(self._pending) >= self._deps.max_pending_packets:
            return False
        loop = asyncio.get_running_loop()
        self._pending.append((loop.time(), packet))
        if self._pump is None:
            self._pump = loop.create_task(self._run_pump())
        return True

    async def cancel(self) -> None:
        """Drop the utterance being captured, the audio not yet processed and any
        recognition in flight (`abort`); the listen mode stays in force (docs/protocol.md
        §1.3), so what the user says next is heard."""
        self.state.stop_pending = False
        self._aborts += 1
        self._pending.clear()
        self._segmenter.reset()
        self._ring.clear()
        await self._drop_stream()
        await cancel_and_wait(list(self._tasks))

    async def close(self) -> None:
        """Stop everything this listener owns."""
        self.state = ListenState()
        self._pending.clear()
        await cancel_and_wait(self._pump)
        await self.cancel()

    async def _run_pump(self) -> None:
        try:
            while self._pending:
                self._drop_late()
                if not self._pending:
                    break
                packets = [packet for _, packet in self._pending]
                self._pending.clear()
                # Push-to-talk ends at `listen stop`: Silero, over half the cost, would
                # score windows that nothing reads.
                vad = self._vad if self.state.uses_vad else None
                job = AudioJob(self._decoder, vad, self._carry, packets)
                aborts = self._aborts
                await self._deps.batcher.submit(job)
                if job.bad_packets:
                    self._deps.metrics.audio_errors.inc(job.bad_packets)
                if aborts != self._aborts:  # an abort came while the job ran: not heard
                    self._carry.clear()
                    continue
                for window, prob in zip(job.windows, job.probs, strict=True):
                    await self._on_window(window, prob)
        except Exception:
            # A failure of the VAD model or the executor: this stream loses its audio
            # backlog, the device and the relay carry on.
            log.exception("[%s] audio processing failed", printable(self._device_id))
            self._pending.clear()
        finally:
            self._pump = None
            if self.state.stop_pending:
                self.state.finish_stop()
                self._end_capture(self._stop_at)

    def _drop_late(self) -> None:
        """While waiting for speech in auto and realtime modes, drop what waited past
        `max_late_s` (the relay is overloaded), so that finding speech, or a barge-in, is
        never seconds late. An utterance being captured keeps all its audio, whatever the
        wait (a first decoder can take 0.5 s to load), and so does push-to-talk."""
        late_s = self._deps.max_late_s
        if not self.state.uses_vad or late_s <= 0 or self.capturing:
            return
        pending = self._pending
        deadline = asyncio.get_running_loop().time() - late_s
        dropped = 0
        while pending and pending[0][0] < deadline:
            pending.popleft()
            dropped += 1
        if dropped:
            self._deps.metrics.audio_dropped.labels("late").inc(dropped)

    async def _on_window(self, window: bytes, prob: float) -> None:
        if self.mode is None:
            return
        if self.mode == "manual":
            # Push-to-talk: everything between start and stop is the utterance.
            if not self.capturing:
                self._begin_utterance()
            await self._feed_asr(window)
            return
        event = self._segmenter.process(WINDOW_S, prob)
        self._ring.append(window)
        if event is SegmentEvent.SPEECH_START:
            self._deps.metrics.vad_segments.inc()
            self._on_speech()  # realtime barge-in is decided by the session
            self._begin_utterance()
            for w in self._ring:  # pre-roll and the windows that proved speech
                await self._feed_asr(w)
            self._ring.clear()
        elif self.capturing:
            self._ring.clear()
            await self._feed_asr(window)
            if event is SegmentEvent.PAUSE:
                self._start_early()
            elif event is not None:
                self._end_early(hit=event is SegmentEvent.SPEECH_END)
            if event in (SegmentEvent.SPEECH_END, SegmentEvent.CUT):
                # The mode stays in force (docs/protocol.md §1.3): the next utterance is
                # heard without another `listen start`.
                self._end_utterance(time.monotonic())

    def _start_early(self) -> None:
        """A pause: decode the utterance so far, if the recogniser can and is free to."""
        stream = self._stream
        if isinstance(stream, EarlyStream) and stream.start_early():
            self._early = True

    def _end_early(self, *, hit: bool) -> None:
        """Speech resumed or the utterance was cut (a miss: the early text is discarded), or
        it ended at the pause (a hit: finish() returns the early text)."""
        if not self._early:
            return
        self._early = False
        self._deps.metrics.asr_early.labels("hit" if hit else "miss").inc()
        if not hit and isinstance(self._stream, EarlyStream):
            self._stream.discard_early()

    def _begin_utterance(self) -> None:
        self._utterance_s = 0.0
        self._early = False
        self._opening = asyncio.get_running_loop().create_task(
            self._deps.asr.open(language=self._deps.language)
        )

    async def _feed_asr(self, window: bytes) -> None:
        if (opening := self._opening) is not None:
            stream: ASRStream | None
            try:
                stream = await opening
            except ASRError as exc:
                stream = None
                if self._opening is opening:
                    self._provider_error(exc)
            if self._opening is not opening:
                return  # stop() ended this utterance while it opened: _recognise owns it
            self._opening, self._stream = None, stream if stream is not None else _FAILED
        if self._stream is None:
            return
        self._utterance_s += WINDOW_S
        try:
            await self._stream.feed(window)
        except ASRError as exc:
            self._provider_error(exc)
            failed, self._stream = self._stream, _FAILED
            await failed.cancel()
        if self.mode == "manual" and self._utterance_s >= self._deps.segmenter.max_utterance_s:
            self._end_utterance(time.monotonic())  # cut and recognised, not buffered forever

    def _end_utterance(self, t_end: float, tail: bytes = b"") -> None:
        stream, opening = self._stream, self._opening
        self._stream = self._opening = None
        if stream is None and opening is None:
            return
        task = asyncio.get_running_loop().create_task(self._recognise(stream, opening, t_end, tail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recognise(
        self,
        stream: ASRStream | None,
        opening: asyncio.Task[ASRStream] | None,
        t_end: float,
        tail: bytes,
    ) -> None:
        m = self._deps.metrics
        provider = self._deps.asr.name
        text = ""
        try:
            if stream is None and opening is not None:
                stream = await opening
            assert stream is not None
            if tail:
                await self._feed_tail(stream, tail)
            start = time.monotonic()
            text = (await stream.finish()).strip()
            if stream is not _FAILED:
                m.asr_latency.labels(provider).observe(time.monotonic() - start)
        except ASRError as exc:
            self._provider_error(exc)
        except asyncio.CancelledError:
            if stream is not None:
                await stream.cancel()
            raise
        self._on_text(text, t_end)

    @staticmethod
    async def _feed_tail(stream: ASRStream, tail: bytes) -> None:
        """The last audio of an utterance; a stream that fails on it is released."""
        try:
            await stream.feed(tail)
        except ASRError:
            await stream.cancel()
            raise

    async def _drop_stream(self) -> None:
        stream, opening = self._stream, self._opening
        self._stream = self._opening = None
        if opening is not None:
            await cancel_and_wait(opening)
            if not opening.cancelled() and opening.exception() is None:
                stream = opening.result()
        if stream is not None:
            await stream.cancel()

    def _provider_error(self, exc: ASRError) -> None:
        self._deps.metrics.provider_errors.labels("asr", self._deps.asr.name, exc.reason).inc()
        log.warning("[%s] asr failed: %s", printable(self._device_id), printable(exc))
