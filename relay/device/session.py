"""A device session: dispatches decoded device messages and owns the turns they start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aioutil import cancel_and_wait
from bridges.business import BusinessTarget, Caller
from protocol import device
from protocol.audio_format import AudioFormat
from protocol.business import Speak, chat_request, envelope, mcp_notification_request
from protocol.device import (
    Abort,
    Custom,
    DetectRules,
    DeviceMessage,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Mcp,
    Ping,
)
from protocol.device_push import DevicePush
from protocol.errors import BusinessError, CloseCode, DeviceError
from protocol.session_state import AudioVerdict
from relay.device.link import Link
from relay.device.listener import Listener, VoiceDeps
from relay.device.mcp import McpClient
from relay.device.tools import ToolContext
from relay.device.turn import Turn, TurnDeps
from relay.logsafe import printable

log = logging.getLogger(__name__)

TOOLS_WAIT_S = 2.0  # a chat right after the hello waits this long for the tool list
TOOL_RESULT_GRACE_S = 1.0  # a closing session lets pending tool calls post their failure


class Session:
    """One device conversation: one chat turn at a time, pass-through turns beside it."""

    def __init__(
        self,
        link: Link,
        deps: TurnDeps,
        downlink: AudioFormat,
        *,
        device_id: str,
        target: BusinessTarget | None,
        max_passthrough: int,
        voice: VoiceDeps | None = None,
        uplink: AudioFormat | None = None,
        detect: DetectRules | None = None,
        mcp: McpClient | None = None,
        max_tool_calls: int = 8,
    ) -> None:
        self.link = link
        self.device_id = device_id
        self.target = target
        self._deps = deps
        self._downlink = downlink
        self._max_passthrough = max_passthrough
        self._speech_lock = asyncio.Lock()
        self._voice = voice
        self._uplink = uplink
        self._detect = detect or DetectRules()
        self.iot: Iot | None = None  # what pre-MCP firmware last said of its things (§1.3)
        self.mcp = mcp  # the device's tools, when its hello declared MCP (§3.1)
        self._max_tool_calls = max_tool_calls
        self._listener: Listener | None = None
        self._chat: tuple[asyncio.Task[None], Turn] | None = None
        self._passthrough: dict[asyncio.Task[None], Turn] = {}
        self._pushed: dict[asyncio.Task[None], Turn] = {}  # pushed speech (not capped)
        self._tasks: set[asyncio.Task[None]] = set()  # every task this session owns
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            Listen: self._on_listen,
            Abort: self._on_abort,
            Custom: self._on_custom,
            Mcp: self._on_mcp,
            Ping: self._on_ping,
            Hello: self._on_hello,
            Goodbye: self._on_goodbye,
            Iot: self._on_iot,
        }

    @property
    def session_id(self) -> str:
        """The relay-generated session id (§1.2)."""
        return self.link.session_id

    def handle(self, msg: DeviceMessage) -> None:
        """Dispatch one decoded device message; long work goes to owned tasks."""
        self._handlers[type(msg)](msg)

    def chat(self, text: str, speech_end: float | None = None) -> asyncio.Task[None]:
        """Start a chat turn for `text`, replacing the running one (§2.1)."""
        ts = time.time_ns() // 1_000_000
        turn = self._turn("chat", always_stop=True, speech_end=speech_end, text=text)

        async def run() -> None:
            tools = await self._tools_for_chat()
            body = chat_request(self.device_id, text, self.session_id, ts, tools)
            await self._run(turn, body, self.session_id)

        return self._start_chat(turn, run)

    async def _tools_for_chat(self) -> bytes | None:
        """The tool list a chat request carries (§3.3): None unless the business has
        device_tools; a device still listing its tools is waited for, briefly."""
        if self.target is None or not self.target.device_tools:
            return None
        if self.mcp is None:
            return b"[]"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TOOLS_WAIT_S):
                await self.mcp.ready.wait()
        return self.mcp.tools

    def custom(self, msg: Custom) -> asyncio.Task[None] | None:
        """Start a pass-through turn for a `custom` payload (§2.1, §2.3); None when over the cap."""
        if len(self._passthrough) >= self._max_passthrough:
            self.link.send_json(device.error(self.session_id, DeviceError.BUSY), "error")
            return None
        return self._pass(msg.request_type, msg.payload, msg.payload_session_id)

    def _pass(self, request_type: str, body: bytes, expected: str | None) -> asyncio.Task[None]:
        turn = self._turn(request_type, always_stop=False)
        task = self._own(self._run(turn, body, expected or self.session_id))
        self._passthrough[task] = turn
        task.add_done_callback(lambda t: self._passthrough.pop(t, None))
        return task

    def start_mcp(self) -> None:
        """Set up the device's MCP session (§3.1), as a task of this session."""
        if self.mcp is not None:
            self._own(self.mcp.setup())

    async def abort(self, *, keep_listening: bool = False) -> None:
        """Cut the current answer: cancel recognition in flight, the chat turn and any
        speech (§1.3, `abort`); a barge-in keeps the utterance being captured."""
        if self._listener is not None and not keep_listening:
            await self._listener.cancel()
        spoke = False
        tasks: list[asyncio.Task[None]] = []
        if self._chat is not None:
            task, turn = self._chat
            self._chat = None
            if not task.done():
                tasks.append(task)
                spoke = True  # the device waits for this answer: tell it the answer is cut
        for task, turn in (*self._passthrough.items(), *self._pushed.items()):
            if turn.speech is not None or turn.tools_pending:  # §3.3: calls are cancelled
                tasks.append(task)
                spoke = spoke or (turn.speech is not None and turn.speech.started)
        await cancel_and_wait(tasks)
        if spoke:
            self.link.send_json(device.tts_stop(self.session_id, aborted=True), "tts")

    async def close(self) -> None:
        """Cancel every turn of this session and wait for them to finish."""
        if self._listener is not None:
            await self._listener.close()
        if self.mcp is not None:
            self.mcp.close()  # calls waiting for the device answer "offline"
            # §3.3: a business whose tool call the device left behind is told so; its
            # answer to that is not waited for long (the device is gone).
            posting = [t for t, turn in self._turns() if turn.tools_pending]
            if posting:
                await asyncio.wait(posting, timeout=TOOL_RESULT_GRACE_S)
        self._chat = None
        await cancel_and_wait(list(self._tasks))

    def _turns(self) -> list[tuple[asyncio.Task[None], Turn]]:
        chat = [self._chat] if self._chat is not None else []
        return [*chat, *self._passthrough.items(), *self._pushed.items()]

    async def wait_idle(self) -> None:
        """Wait until no turn is running (used by the simulate endpoint and drains)."""
        while tasks := list(self._tasks):
            await asyncio.wait(tasks)

    # ---- handlers ---------------------------------------------------------------------

    def push_command(self, command_raw: bytes) -> None:
        """A pushed business-style event, passed through in the envelope (§2.4, "push")."""
        ts = time.time_ns() // 1_000_000
        self.link.send_json(envelope(self.session_id, "push", command_raw, ts), "custom")

    def push_speak(self, sp: Speak) -> None:
        """Pushed text to speak; queued behind any answer being spoken (the speech lock)."""
        turn = self._turn("push", always_stop=False)
        task = self._own(turn.speak(sp))
        self._pushed[task] = turn  # an abort or a barge-in cuts it like any answer
        task.add_done_callback(lambda t: self._pushed.pop(t, None))

    def push_device(self, msg: DevicePush) -> None:
        """A pushed device-native message (llm, alert, system, notify) with this session's
        id; sent at once, beside any answer being spoken (§4)."""
        self.link.send_json(msg.message(self.session_id), msg.type)

    def on_audio(self, packet: bytes) -> None:
        """One uplink audio packet (§1.4) for the microphone pipeline."""
        listener = self._listener
        if listener is None:
            verdict = AudioVerdict.NOT_LISTENING
        else:
            verdict = listener.state.audio(speaking=self._speaking())
            if verdict is AudioVerdict.FEED and not listener.feed(packet):
                verdict = AudioVerdict.BACKLOG
        if verdict is not AudioVerdict.FEED:
            self._deps.metrics.audio_dropped.labels(verdict.value).inc()

    def _on_listen(self, msg: Listen) -> None:
        if msg.state == "detect":
            self._on_detect(msg)
            return
        listener = self._listener or self._make_listener()
        if listener is None:
            return
        if msg.state == "start":
            listener.start(msg.mode or "auto")
        else:
            listener.stop()

    def _on_detect(self, msg: Listen) -> None:
        # docs/protocol.md §1.3: a wake word, or text the user typed.
        if msg.text_response:
            turn = self._turn("chat", always_stop=False)
            speak = Speak(answer=msg.text_response)
            self._start_chat(turn, lambda: turn.speak(speak))
            return
        text = (msg.text or "").strip()
        rules = self._detect
        if rules.is_wake_word(text):
            self._deps.metrics.wake_words.inc()
            if not text or not rules.wake_word_chat:
                return  # a wake word alone asks nothing
        elif len(text) > rules.max_text_chars:
            self.link.send_json(device.error(self.session_id, DeviceError.TEXT_TOO_LONG), "error")
            return
        self.link.send_json(device.stt(self.session_id, text), "stt")
        self.chat(text)

    def _make_listener(self) -> Listener | None:
        if self._voice is None or self._uplink is None:
            self.link.send_json(device.error(self.session_id, DeviceError.NOT_READY), "error")
            return None
        self._listener = Listener(
            self._voice,
            self._uplink,
            on_speech=self._on_speech,
            on_text=self._on_text,
            device_id=self.device_id,
        )
        return self._listener

    def _on_speech(self) -> None:
        # Realtime mode (§1.3): speech while the device is speaking interrupts the answer.
        listener = self._listener
        if listener is None or not listener.state.barge_in(speaking=self._speaking()):
            return
        self._deps.metrics.barge_ins.inc()
        self._own(self.abort(keep_listening=True))

    def _speaking(self) -> bool:
        # Every answer holds the speech lock from `tts start` to `tts stop` (Speech.run):
        # one check per uplink packet in auto mode, without walking the turns.
        return self._speech_lock.locked()

    def _on_text(self, text: str, speech_end: float) -> None:
        self.link.send_json(device.stt(self.session_id, text), "stt")
        if text:
            self.chat(text, speech_end)
        else:
            # Nothing heard (silence, provider error): a clear end, never a hang.
            self.link.send_json(device.tts_stop(self.session_id, aborted=False), "tts")

    def _on_abort(self, _msg: Abort) -> None:
        self._own(self.abort())

    def _on_custom(self, msg: Custom) -> None:
        self.custom(msg)

    def _on_mcp(self, msg: Mcp) -> None:
        if self.mcp is None:
            self._deps.metrics.mcp_messages.labels("no_session").inc()
            return
        note = self.mcp.on_message(msg.payload)
        if note is None:
            return
        log.debug("[%s] mcp %s from the device", printable(self.device_id), printable(note.method))
        target = self.target
        if target is None or not target.device_tools:
            return
        if len(self._passthrough) >= self._max_passthrough:
            self._deps.metrics.mcp_messages.labels("not_forwarded").inc()
            return
        ts = time.time_ns() // 1_000_000
        self._pass(
            "mcp_notification",
            mcp_notification_request(self.device_id, msg.payload, self.session_id, ts),
            None,
        )

    def _on_ping(self, _msg: Ping) -> None:
        self.link.send_json(device.pong(), "pong")

    def _on_hello(self, _msg: Hello) -> None:
        log.debug("repeated hello from %s ignored", printable(self.device_id))

    def _on_goodbye(self, _msg: Goodbye) -> None:
        self.link.request_close(CloseCode.NORMAL)  # the device ends the session (§1.3)

    def _on_iot(self, msg: Iot) -> None:
        # Pre-MCP firmware (§1.3): kept, never refused; nothing acts on it yet.
        previous = self.iot or Iot()
        self.iot = Iot(msg.descriptors or previous.descriptors, msg.states or previous.states)

    # ---- turns ------------------------------------------------------------------------

    def _turn(
        self,
        request_type: str,
        *,
        always_stop: bool,
        speech_end: float | None = None,
        text: str | None = None,
    ) -> Turn:
        tools = None
        if self.target is not None and self.target.device_tools:
            timeout_s = self.mcp.timeout_s if self.mcp is not None else 0.0
            m = self._deps.metrics
            tools = ToolContext(self.device_id, self.mcp, self._max_tool_calls, timeout_s, m)
        return Turn(
            self.link,
            self._deps,
            self._downlink,
            self._speech_lock,
            request_type=request_type,
            always_stop=always_stop,
            speech_end=speech_end,
            text=text,
            tools=tools,
        )

    async def _run(self, turn: Turn, body: bytes, expected: str) -> None:
        if self.target is None:
            turn.fail(BusinessError.NOT_CONFIGURED)
            return
        # The business learns who asks from the relay, not from the body (§2.1).
        await turn.run(self.target, body, Caller(self.device_id, self.session_id), expected)

    def _start_chat(self, turn: Turn, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        previous = self._chat
        task = self._own(self._after(previous, work))
        self._chat = (task, turn)
        return task

    async def _after(
        self, previous: tuple[asyncio.Task[None], Turn] | None, work: Callable[[], Awaitable[None]]
    ) -> None:
        # docs/protocol.md §1.3: a new utterance cancels the running chat turn, whose
        # device then hears `tts stop` aborted before the new answer starts. The turn's
        # coroutine is made here, once this task runs: made by the caller, it was never
        # awaited when this task was cancelled before its first step (a session closed at once).
        if previous is not None and not previous[0].done():
            await cancel_and_wait(previous[0])
            if previous[1].speech is not None and previous[1].speech.started:
                self.link.send_json(device.tts_stop(self.session_id, aborted=True), "tts")
        await work()

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("turn of %s failed", printable(self.device_id), exc_info=exc)
