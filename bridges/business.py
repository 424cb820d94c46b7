"""Business service client: one POST, its SSE answer as typed events (docs/protocol.md §2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal

from bridges.http import IDLE_TIMEOUT_S, Endpoint, HTTPClient, HTTPError, Response
from protocol.business import (
    BadEvent,
    BusinessEvent,
    is_end,
    parse_event,
    relay_headers,
    session_ok,
)
from protocol.errors import BusinessError, BusinessOutcome, business_error
from protocol.sse import SSEDecoder, SSEEvent

SessionCheck = Literal["strict", "lenient"]
DRAIN_TIMEOUT_S = 0.1
DRAIN_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BusinessTarget:
    """One configured business service (§2.5): where to POST and how long to wait."""

    name: str
    url: str
    token: str = field(default="", repr=False)  # secrets stay out of every repr and log
    signing_secret: str = field(default="", repr=False)  # signs requests (§2.1)
    session_check: SessionCheck = "strict"
    connect_timeout_s: float = 3.0
    first_event_timeout_s: float = 15.0
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 300.0
    keepalive_timeout_s: float = IDLE_TIMEOUT_S  # an idle pooled connection is closed after
    max_event_bytes: int = 1 << 20
    device_tools: bool = False  # tool lists in chat requests, tool_call events run (§3.3)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is for, as the relay vouches for it (§2.1, X-Relay-* headers): the
    authenticated, canonical device id and the device connection's session id."""

    device_id: str
    session_id: str


@dataclass(slots=True)
class StreamStats:
    """What one request did; filled while streaming, read by the caller for metrics."""

    outcome: BusinessOutcome = BusinessOutcome.CANCELLED
    first_event_s: float | None = None
    total_s: float = 0.0
    events: int = 0
    foreign_dropped: int = 0
    bad_events: int = 0
    # What the relay logs when a business errs (§2.3, §2.6): the first foreign `session_id`
    # ("" = none given), the answer's status and content type, the connection's error.
    foreign_session: str | None = None
    status: int | None = None
    content_type: str | None = None
    error: str | None = None

    @property
    def failure(self) -> BusinessError | None:
        """The error code the device is told, or None when the request did not fail."""
        return business_error(self.outcome)


class _Failed(Exception):
    def __init__(self, outcome: BusinessOutcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class BusinessClient:
    """Streams business answers over pooled keep-alive connections; never re-POSTs."""

    def __init__(self, http: HTTPClient) -> None:
        self._http = http
        self._endpoints: dict[str, Endpoint] = {}

    def _endpoint(self, url: str) -> Endpoint:
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            endpoint = self._endpoints[url] = Endpoint.parse(url)
        return endpoint

    async def stream(
        self,
        target: BusinessTarget,
        body: bytes,
        caller: Caller,
        expected_session: str,
        stats: StreamStats,
    ) -> AsyncGenerator[BusinessEvent, None]:
        """POST `body` and yield each event that passes the session check (§2.3).

        Ends at `message_end` or end of stream. Failures of §2.6, and an end of stream
        without `message_end` (§2.7), end the iteration quietly; `stats.failure` then names
        the error the device must be told.
        """
        clock = asyncio.get_running_loop().time  # deadlines on the loop's own clock
        start = clock()
        total_deadline = start + target.total_timeout_s
        lenient = target.session_check == "lenient"
        decoder = SSEDecoder(target.max_event_bytes)
        stats.outcome = BusinessOutcome.CANCELLED
        resp: Response | None = None
        try:
            deadline = min(start + target.first_event_timeout_s, total_deadline)
            async with asyncio.timeout_at(deadline):
                resp = await self._http.post(
                    self._endpoint(target.url),
                    body,
                    _headers(target, caller, body),
                    connect_timeout_s=target.connect_timeout_s,
                    keepalive_s=target.keepalive_timeout_s,
                )
            stats.status, stats.content_type = resp.status, resp.content_type
            _check_response(resp)
            while True:
                async with asyncio.timeout_at(deadline):
                    chunk = await resp.read()
                sse_events = decoder.feed(chunk) if chunk else decoder.close()
                for sse in sse_events:
                    event = _accept(sse, expected_session, lenient, stats)
                    if event is None:
                        continue
                    if stats.first_event_s is None:  # only this session's events count
                        stats.first_event_s = clock() - start
                    stats.events += 1
                    yield event
                    if is_end(event):
                        stats.outcome = BusinessOutcome.OK
                        await _drain(resp)
                        return
                if not chunk:
                    stats.outcome = BusinessOutcome.INCOMPLETE
                    return
                if stats.first_event_s is not None:
                    deadline = min(clock() + target.idle_timeout_s, total_deadline)
        except _Failed as exc:
            stats.outcome = exc.outcome
        except TimeoutError:
            stats.outcome = BusinessOutcome.TIMEOUT
        except (HTTPError, OSError) as exc:
            stats.error = type(exc).__name__  # logged by the caller, with the business's URL
            stats.outcome = BusinessOutcome.UNREACHABLE
        finally:
            if resp is not None:
                resp.release()
            stats.total_s = clock() - start


def _headers(target: BusinessTarget, caller: Caller, body: bytes) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    headers.update(
        relay_headers(
            caller.device_id,
            caller.session_id,
            body,
            secret=target.signing_secret,
            now=int(time.time()),
        )
    )
    return headers


def _accept(
    sse: SSEEvent, expected_session: str, lenient: bool, stats: StreamStats
) -> BusinessEvent | None:
    """The event `sse` carries if it is for this session; None, counted, when it is not."""
    if sse.oversized:
        stats.bad_events += 1
        return None
    try:
        event = parse_event(sse.data)
    except BadEvent:
        stats.bad_events += 1  # §2.6: skipped, the stream goes on
        return None
    if not session_ok(event, expected_session, lenient=lenient):
        stats.foreign_dropped += 1
        if stats.foreign_session is None:
            stats.foreign_session = event.session_id or ""
        return None
    return event


async def _drain(resp: Response) -> None:
    # After message_end the business normally ends its response at once; reading that end
    # lets the pooled connection be reused instead of closed (a new TCP connection per
    # request otherwise). A business that keeps the stream open is not waited for long.
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            received = 0
            while received <= DRAIN_MAX_BYTES and (chunk := await resp.read()):
                received += len(chunk)
    except (TimeoutError, HTTPError, OSError):
        pass


def _check_response(resp: Response) -> None:
    if resp.status != 200:
        raise _Failed(BusinessOutcome.STATUS)
    if resp.content_type != "text/event-stream":
        raise _Failed(BusinessOutcome.CONTENT_TYPE)
