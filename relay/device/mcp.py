"""The relay as MCP client of one device's tool server (docs/protocol.md §3.1): set-up after
the hello, replies matched to requests by integer id, the tool list kept with the connection,
and tool calls for the tools API and for business answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Literal

from metrics.registry import Metrics
from protocol import mcp
from protocol.mcp import Notification, Reply, ToolAnswer
from relay.config.schema import McpConfig
from relay.device.link import Link
from relay.logs import ms, story
from relay.logsafe import printable

log = logging.getLogger(__name__)

McpState = Literal["pending", "ready", "unavailable"]


class DeviceGone(Exception):
    """The connection ended while a request waited for the device's reply."""


class McpClient:
    """One device's MCP session: `setup` lists its tools, `call` runs one, `on_message`
    takes what the device sends."""

    def __init__(self, link: Link, cfg: McpConfig, metrics: Metrics, device_id: str) -> None:
        self._link = link
        self._cfg = cfg
        self._metrics = metrics
        self._device = printable(device_id)
        self.state: McpState = "pending"
        self.tools = b"[]"  # the kept list, one JSON array: small beside parsed objects
        self.server_info: dict[str, str] = {}
        self.dropped = 0  # tools the caps or the checks left out
        self.ready = asyncio.Event()  # set once the state is no longer "pending"
        self._next_id = 1
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._closed = False

    async def request(self, payload_of: Callable[[int], bytes], timeout_s: float) -> Reply:
        """Send the request `payload_of(id)` with a fresh integer id and wait for its reply;
        TimeoutError when it does not come in time, `DeviceGone` when the device leaves."""
        if self._closed or self._link.closed:
            raise DeviceGone
        rid = self._next_id
        self._next_id += 1
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = waiter
        try:
            self._link.send_json(mcp.device_message(self._link.session_id, payload_of(rid)), "mcp")
            async with asyncio.timeout(timeout_s):
                return await waiter
        finally:
            self._waiting.pop(rid, None)

    def on_message(self, payload: bytes) -> Notification | None:
        """One device `mcp` payload: a reply resolves its request; a notification is
        returned for the session to forward; the rest is dropped and counted."""
        msg = mcp.parse(payload)
        count = self._metrics.mcp_messages
        if isinstance(msg, Notification):
            count.labels("notification").inc()
            return msg
        if isinstance(msg, Reply):
            waiter = self._waiting.get(msg.id)
            if waiter is not None and not waiter.done():
                count.labels("reply").inc()
                waiter.set_result(msg)
            else:  # an id the relay used and gave up on is late; any other is wrong
                count.labels("late" if 0 < msg.id < self._next_id else "unknown_id").inc()
            return None
        count.labels(msg.why).inc()
        return None

    async def setup(self) -> None:
        """`initialize`, then `tools/list` page by page (§3.1); a device that does not
        answer, or answers with an error, leaves the tools unavailable."""
        state: McpState = "unavailable"
        try:
            state = await self._setup()
        except TimeoutError:
            log.info("[%s] mcp: the device did not answer the set-up in time", self._device)
        except DeviceGone:
            pass
        finally:
            self.state = state
            self._metrics.mcp_sessions.labels(state).inc()
            self.ready.set()

    async def _setup(self) -> McpState:
        cfg, t = self._cfg, self._cfg.timeout_s
        vision = cfg.vision
        init = await self.request(lambda rid: mcp.initialize(rid, vision.url, vision.token), t)
        if init.error is not None:
            log.info("[%s] mcp initialize refused: %s", self._device, printable(init.error.message))
            return "unavailable"
        self.server_info = mcp.server_info(init.result)
        collector = mcp.ToolCollector(cfg.max_tools, cfg.max_list_bytes)
        cursor, pages = "", 0
        while True:
            got = await self.request(partial(mcp.tools_list, cursor=cursor), t)
            page = mcp.tools_page(got.result)
            if page is None:
                log.info("[%s] mcp tools/list: no tool list in the answer", self._device)
                return "unavailable"
            collector.add(page)
            pages += 1
            if not page.next_cursor or page.next_cursor == cursor or collector.full:
                break
            if pages >= mcp.MAX_PAGES:
                collector.dropped["max_pages"] = 1
                break
            cursor = page.next_cursor
        self.tools, count = collector.result()
        for why, n in collector.dropped.items():
            self._metrics.mcp_tools_dropped.labels(why).inc(n)
            self.dropped += n
        log.info(
            "[%s] mcp ready: %s %s, %d tools (%d dropped)",
            self._device,
            printable(self.server_info.get("name", "?")),
            printable(self.server_info.get("version", "?")),
            count,
            self.dropped,
        )
        return "ready"

    async def call(self, name: str, arguments: bytes, timeout_s: float, via: str) -> ToolAnswer:
        """Run tool `name` on the device: its answer, or why there is none."""
        start = time.perf_counter()
        answer, result = await self._call(name, arguments, timeout_s)
        self._metrics.tool_calls.labels(via, result).inc()
        duration_ms = ms(time.perf_counter() - start)
        story(
            log,
            "tool_call",
            device=self._device,
            tool=name[:80],
            via=via,
            result=result,
            duration_ms=duration_ms,
        )
        return answer

    async def _call(self, name: str, arguments: bytes, timeout_s: float) -> tuple[ToolAnswer, str]:
        if self.state != "ready":
            return ToolAnswer("tools_unavailable"), "tools_unavailable"
        if not mcp.has_tool(self.tools, name):
            return ToolAnswer("unknown_tool"), "unknown_tool"
        start = time.perf_counter()
        try:
            reply = await self.request(lambda rid: mcp.tools_call(rid, name, arguments), timeout_s)
        except TimeoutError:
            return ToolAnswer("timeout"), "timeout"
        except DeviceGone:
            return ToolAnswer("offline"), "offline"
        self._metrics.tool_call_duration.observe(time.perf_counter() - start)
        return mcp.call_answer(reply), "ok" if reply.error is None else "device_error"

    @property
    def timeout_s(self) -> float:
        """How long a device request may take (`[mcp] timeout_s`)."""
        return self._cfg.timeout_s

    def list_answer(self) -> ToolAnswer:
        """The tools API's answer to a list request."""
        if self.state != "ready":
            return ToolAnswer("tools_unavailable")
        return mcp.list_answer(self.tools, self.server_info, self.dropped)

    def close(self) -> None:
        """The connection ended: every waiting request fails with `DeviceGone`."""
        self._closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(DeviceGone())
