"""A device session: dispatches decoded device messages and owns the turns they start."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from asr_tts.audio import DownlinkFormat
from bridges.business import BusinessTarget
from protocol import device
from protocol.business import chat_request
from protocol.codes import BusinessError, DeviceError
from protocol.device import Abort, Custom, DeviceMessage, Hello, Listen, Mcp, Ping
from relay.link import Link
from relay.turn import Turn, TurnDeps

log = logging.getLogger(__name__)


class Session:
    """One device conversation: one chat turn at a time, pass-through turns beside it."""

    def __init__(
        self,
        link: Link,
        deps: TurnDeps,
        downlink: DownlinkFormat,
        *,
        device_id: str,
        target: BusinessTarget | None,
        max_passthrough: int,
    ) -> None:
        self.link = link
        self.device_id = device_id
        self.target = target
        self._deps = deps
        self._downlink = downlink
        self._max_passthrough = max_passthrough
        self._speech_lock = asyncio.Lock()
        self._chat: tuple[asyncio.Task[None], Turn] | None = None
        self._passthrough: dict[asyncio.Task[None], Turn] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every task this session owns
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            Listen: self._on_listen,
            Abort: self._on_abort,
            Custom: self._on_custom,
            Mcp: self._on_mcp,
            Ping: self._on_ping,
            Hello: self._on_hello,
        }

    @property
    def session_id(self) -> str:
        """The relay-generated session id (§1.2)."""
        return self.link.session_id

    def handle(self, msg: DeviceMessage) -> None:
        """Dispatch one decoded device message; long work goes to owned tasks."""
        self._handlers[type(msg)](msg)

    def chat(self, text: str) -> asyncio.Task[None]:
        """Start a chat turn for `text`, replacing the running one (§2.1)."""
        ts = time.time_ns() // 1_000_000
        body = chat_request(self.device_id, text, self.session_id, ts)
        turn = self._turn("chat", always_stop=True)
        return self._start_chat(turn, self._run(turn, body, self.session_id))

    def custom(self, msg: Custom) -> asyncio.Task[None] | None:
        """Start a pass-through turn for a `custom` payload (§2.1, §2.3); None when over the cap."""
        if len(self._passthrough) >= self._max_passthrough:
            self.link.send_json(device.error(self.session_id, DeviceError.BUSY), "error")
            return None
        turn = self._turn(msg.request_type, always_stop=False)
        expected = msg.payload_session_id or self.session_id
        task = self._own(self._run(turn, msg.payload, expected))
        self._passthrough[task] = turn
        task.add_done_callback(lambda t: self._passthrough.pop(t, None))
        return task

    async def abort(self) -> None:
        """Cut the current answer: cancel the chat turn and any speech (§1.3, `abort`)."""
        spoke = False
        tasks: list[asyncio.Task[None]] = []
        if self._chat is not None:
            task, turn = self._chat
            self._chat = None
            if not task.done():
                tasks.append(task)
                spoke = True  # the device waits for this answer: tell it the answer is cut
        for task, turn in self._passthrough.items():
            if turn.speech is not None:
                tasks.append(task)
                spoke = spoke or turn.speech.started
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if spoke:
            self.link.send_json(device.tts_stop(self.session_id, aborted=True), "tts")

    async def close(self) -> None:
        """Cancel every turn of this session and wait for them to finish."""
        self._chat = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def wait_idle(self) -> None:
        """Wait until no turn is running (used by the simulate endpoint and drains)."""
        while tasks := list(self._tasks):
            await asyncio.wait(tasks)

    # ---- handlers ---------------------------------------------------------------------

    def _on_listen(self, msg: Listen) -> None:
        if msg.state == "detect" and msg.text_response:
            turn = self._turn("chat", always_stop=False)
            self._start_chat(turn, turn.speak_text(msg.text_response))
        # Audio capture (start/stop) and wake words without a response: the voice issue.

    def _on_abort(self, _msg: Abort) -> None:
        self._own(self.abort())

    def _on_custom(self, msg: Custom) -> None:
        self.custom(msg)

    def _on_mcp(self, _msg: Mcp) -> None:
        log.debug("mcp message from %s ignored: no MCP peer configured", self.device_id)

    def _on_ping(self, _msg: Ping) -> None:
        self.link.send_json(device.pong(), "pong")

    def _on_hello(self, _msg: Hello) -> None:
        log.debug("repeated hello from %s ignored", self.device_id)

    # ---- turns ------------------------------------------------------------------------

    def _turn(self, request_type: str, *, always_stop: bool) -> Turn:
        return Turn(
            self.link,
            self._deps,
            self._downlink,
            self._speech_lock,
            request_type=request_type,
            always_stop=always_stop,
        )

    async def _run(self, turn: Turn, body: bytes, expected: str) -> None:
        if self.target is None:
            turn.fail(BusinessError.NOT_CONFIGURED)
            return
        await turn.run(self.target, body, expected)

    def _start_chat(self, turn: Turn, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        previous = self._chat
        task = self._own(self._after(previous, coro))
        self._chat = (task, turn)
        return task

    async def _after(
        self, previous: tuple[asyncio.Task[None], Turn] | None, coro: Coroutine[Any, Any, None]
    ) -> None:
        # PROTOCOL.md / ARCHITECTURE.md: a new utterance cancels the running chat turn, whose
        # device then hears `tts stop` aborted before the new answer starts.
        try:
            if previous is not None and not previous[0].done():
                previous[0].cancel()
                await asyncio.wait([previous[0]])
                if previous[1].speech is not None and previous[1].speech.started:
                    self.link.send_json(device.tts_stop(self.session_id, aborted=True), "tts")
            await coro
        finally:
            coro.close()  # never started when cancelled while waiting: no "never awaited" noise

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("turn of %s failed", self.device_id, exc_info=exc)
