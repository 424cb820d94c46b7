"""Tool calls inside a business answer (docs/protocol.md §3.3): a business with
`device_tools = true` answers with `tool_call` events; the relay runs them on the device one
after the other, in order, and posts each `tool_result` back to the business."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from metrics.registry import Metrics
from protocol import mcp
from protocol.business import ToolCall, tool_result_request
from protocol.mcp import ToolAnswer, ToolReason
from relay.device.mcp import McpClient
from relay.logsafe import printable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a turn needs to run tool calls: the device's MCP client (None: the device has
    none), how many calls one user turn may run, and how long each may take."""

    device_id: str
    client: McpClient | None
    max_calls: int
    timeout_s: float
    metrics: Metrics


Post = Callable[[bytes], Awaitable[None]]
"""POST a `tool_result` body to the business and route its answer like any turn's."""


class ToolRunner:
    """The tool calls of one user turn, run in order by one task; the answers to their
    results may ask for more calls, queued behind, within `max_calls`."""

    def __init__(self, ctx: ToolContext, post: Post) -> None:
        self._ctx = ctx
        self._post = post
        self._calls: collections.deque[ToolCall] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._started = 0
        self._busy = False  # a call, or the post of its result, is under way

    def submit(self, call: ToolCall) -> None:
        """Queue a call behind the others."""
        self._calls.append(call)
        self._wake.set()

    def close(self) -> None:
        """No call will come from the first answer any more: `run` ends once the queue,
        and the calls its results lead to, are done."""
        self._closed = True
        self._wake.set()

    @property
    def pending(self) -> bool:
        """Calls wait or run."""
        return bool(self._calls) or self._busy or not self._closed

    async def run(self) -> None:
        """Run the calls in order until closed and empty."""
        while True:
            if self._calls:
                call = self._calls.popleft()
                self._busy = True
                outcome = await self._outcome(call)
                ts = time.time_ns() // 1_000_000
                await self._post(tool_result_request(self._ctx.device_id, call, outcome, ts))
                self._busy = False
            elif self._closed:
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _outcome(self, call: ToolCall) -> bytes:
        """The call's result or error, as the JSON object the `tool_result` details carry."""
        ctx, client = self._ctx, self._ctx.client
        self._started += 1
        reason = self._refusal(call)
        if reason is None and client is not None:
            answer = await client.call(call.name, call.arguments, ctx.timeout_s, "answer")
        else:
            answer = ToolAnswer(reason or "mcp_unsupported")
            ctx.metrics.tool_calls.labels("answer", answer.reason).inc()
        if answer.reason is not None:
            log.info(
                "[%s] tool call %s not run on the device: %s",
                printable(ctx.device_id),
                printable(call.name),
                answer.reason,
            )
            return orjson.dumps({"is_error": True, "error": mcp.reason_json(answer.reason)})
        return answer.body

    def _refusal(self, call: ToolCall) -> ToolReason | None:
        if call.problem is not None:
            return "bad_arguments" if call.problem == "bad_arguments" else "unknown_tool"
        if self._started > self._ctx.max_calls:
            return "too_many_calls"
        return "mcp_unsupported" if self._ctx.client is None else None
