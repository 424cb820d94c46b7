"""asyncio helpers shared by every package of the relay (none of ours is imported here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(
    tasks: asyncio.Future[Any] | Iterable[asyncio.Future[Any] | None] | None,
    within_s: float | None = None,
) -> None:
    """Cancel `tasks` and wait until they have finished, or for at most `within_s` seconds
    (then it returns without raising, the tasks still finishing).

    Their outcome (result, exception, cancellation) is not raised here, so one failed task
    does not hide the others; the caller's own cancellation still propagates (asyncio.wait
    does not swallow it). A task already done is left as it is."""
    if tasks is None or isinstance(tasks, asyncio.Future):
        tasks = [tasks]
    pending = [t for t in tasks if t is not None and not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=within_s)
