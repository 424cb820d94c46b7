"""The wire both DashScope (Aliyun Model Studio) speech providers speak: one WebSocket, one task.

Followed: Model Studio's "WebSocket API" pages for Paraformer real-time recognition and for
CosyVoice synthesis, and their client-event and server-event references. Both run on
wss://dashscope.aliyuncs.com/api-ws/v1/inference (a workspace domain,
wss://{WorkspaceId}.cn-beijing.maas.aliyuncs.com/..., is the same API), authenticated by the
handshake header ``Authorization: Bearer <api key>``.

- The client sends JSON text events, each ``{"header": {"action", "task_id", "streaming":
  "duplex"}, "payload": {...}}``: ``run-task`` first (payload: task_group "audio", task,
  function, model, parameters, input {}), then — only after the server's ``task-started`` —
  the task's input (binary audio frames for recognition, ``continue-task`` events with
  payload.input.text for synthesis), then ``finish-task`` (payload.input {}).
- The server sends JSON text events ``{"header": {"task_id", "event", "attributes", and on
  failure "error_code", "error_message"}, "payload": {...}}``: ``task-started``,
  ``result-generated`` (payload.output), ``task-finished``, ``task-failed``; synthesis
  sends its audio as binary frames between them.

The task id is a fresh UUID per task (the documents show it as 32 hex digits or with dashes;
both are accepted). One connection carries one task here: the documents allow reusing it for
the next task, which would save a handshake per utterance or sentence, not done yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from asr_tts.errors import Reason, http_reason

DEFAULT_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
# How long closing waits for the server's close frame: nothing more is wanted from the
# connection, and a server still streaming a sentence nobody will hear may not answer soon.
CLOSE_WAIT_S = 0.1
MESSAGE_LIMIT = 200  # characters of a server's error message kept in ours


class DashScopeError(Exception):
    """The connection or the task failed; the message names the cause and never the key, the
    reason is the provider's (asr_tts/errors.py)."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def code_reason(code: str) -> Reason:
    """The reason for a task-failed error_code: Throttling, Throttling.RateQuota and
    Throttling.AllocationQuota are rate limits, InvalidApiKey and AccessDenied* credentials."""
    if code.startswith("Throttling"):
        return "rate_limited"
    if code == "InvalidApiKey" or code.startswith("AccessDenied"):
        return "auth"
    return "refused"


@dataclass(frozen=True, slots=True)
class Event:
    """One server event."""

    name: str
    task_id: str
    error_code: str = ""
    error_message: str = ""
    output: dict[str, Any] = field(default_factory=dict)


def new_task_id() -> str:
    """A task id: a UUID as 32 hex digits, as the documents' examples show it."""
    return uuid.uuid4().hex


def run_task(task_id: str, *, task: str, function: str, model: str, parameters: object) -> str:
    """The run-task event that starts a task."""
    payload = {
        "task_group": "audio",
        "task": task,
        "function": function,
        "model": model,
        "parameters": parameters,
        "input": {},
    }
    return _client_event("run-task", task_id, payload)


def continue_task(task_id: str, text: str) -> str:
    """The continue-task event that gives a synthesis task its text."""
    return _client_event("continue-task", task_id, {"input": {"text": text}})


def finish_task(task_id: str) -> str:
    """The finish-task event: no more input; the server ends with task-finished."""
    return _client_event("finish-task", task_id, {"input": {}})


def _client_event(action: str, task_id: str, payload: dict[str, object]) -> str:
    header = {"action": action, "task_id": task_id, "streaming": "duplex"}
    return orjson.dumps({"header": header, "payload": payload}).decode()


def parse_event(text: str, task_id: str) -> Event:
    """Decode one server text event of task `task_id`; DashScopeError when it is not one."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DashScopeError("a server event that is not JSON", reason="bad_answer") from exc
    header = doc.get("header") if isinstance(doc, dict) else None
    if not isinstance(header, dict) or not isinstance(name := header.get("event"), str):
        raise DashScopeError("a server event without header.event", reason="bad_answer")
    if header.get("task_id", task_id) != task_id:
        raise DashScopeError(f"a {name} event of another task", reason="bad_answer")
    payload = doc.get("payload")
    output = payload.get("output") if isinstance(payload, dict) else None
    code, message = header.get("error_code"), header.get("error_message")
    return Event(
        name,
        task_id,
        error_code=code if isinstance(code, str) else "",
        error_message=message[:MESSAGE_LIMIT] if isinstance(message, str) else "",
        output=output if isinstance(output, dict) else {},
    )


def failure(event: Event) -> DashScopeError:
    """The error a task-failed event (or an event we did not expect) stands for."""
    if event.name == "task-failed":
        return DashScopeError(
            f"task failed: {event.error_code or '?'}: {event.error_message}",
            reason=code_reason(event.error_code),
        )
    return DashScopeError(f"unexpected {event.name} event", reason="bad_answer")


async def connect(
    session: aiohttp.ClientSession, url: str, api_key: str, timeout_s: float
) -> aiohttp.ClientWebSocketResponse:
    """Open the WebSocket within `timeout_s`; DashScopeError says why it could not."""
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with asyncio.timeout(timeout_s):
            return await session.ws_connect(
                url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=timeout_s)
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise DashScopeError(
            f"the handshake was refused: HTTP {exc.status}", reason=http_reason(exc.status)
        ) from exc
    except TimeoutError as exc:
        raise DashScopeError(f"no connection within {timeout_s} s", reason="timeout") from exc
    except aiohttp.ClientError as exc:
        # str(), not repr(): the repr of some aiohttp errors carries the request headers.
        raise DashScopeError(
            f"cannot connect: {type(exc).__name__}: {exc}", reason="connection"
        ) from exc


async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close the WebSocket; after CLOSE_WAIT_S without the server's reply, drop it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT_S):
            await ws.close()
