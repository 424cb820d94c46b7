"""Whether each business service can be reached: probed once at start (a warning, never a
refusal to start), then kept current by every request's outcome; `/readyz` reports the ones
that cannot as `degraded`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from bridges.business import BusinessTarget, StreamStats
from protocol.errors import BusinessOutcome
from relay.logs import safe_url, story

log = logging.getLogger("relay.business")


class Reachability:
    """The configured businesses last seen unreachable, by name, with the error seen."""

    def __init__(self) -> None:
        self.unreachable: dict[str, str] = {}

    def saw(self, target: BusinessTarget, stats: StreamStats) -> None:
        """Learn from one request: unreachable, or answered (whatever it answered)."""
        if stats.outcome is BusinessOutcome.UNREACHABLE:
            self.unreachable[target.name] = stats.error or "unreachable"
        elif stats.status is not None:
            self.unreachable.pop(target.name, None)

    async def probe(self, targets: Iterable[BusinessTarget]) -> None:
        """Open (and close) one TCP connection to each business; log how each went."""
        await asyncio.gather(*(self._probe(t) for t in targets))

    async def _probe(self, target: BusinessTarget) -> None:
        parts = urlsplit(target.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(target.connect_timeout_s):
                _reader, writer = await asyncio.open_connection(parts.hostname, port)
        except (OSError, TimeoutError) as exc:
            error = type(exc).__name__
            self.unreachable[target.name] = error
            story(
                log,
                "business_unreachable",
                logging.WARNING,
                business=target.name,
                url=safe_url(target.url),
                error=error,
                hint="devices get business_unreachable until it answers; the relay serves on",
            )
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.unreachable.pop(target.name, None)
        story(log, "business_reachable", business=target.name, url=safe_url(target.url))
