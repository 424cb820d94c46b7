"""cancel_and_wait (aioutil): the one way the relay stops tasks it owns."""

from __future__ import annotations

import asyncio

import pytest

from aioutil import cancel_and_wait


async def test_cancels_and_waits_for_every_task() -> None:
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)  # cleanup that must finish before the caller goes on
            cleaned.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in "abc"]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks)
    assert sorted(cleaned) == ["a", "b", "c"]
    assert all(t.cancelled() for t in tasks)


async def test_one_task_none_and_done_tasks() -> None:
    done = asyncio.create_task(asyncio.sleep(0, result=7))
    await done
    sleeper = asyncio.create_task(asyncio.sleep(10))
    await cancel_and_wait(sleeper)
    assert sleeper.cancelled()
    await cancel_and_wait(None)
    await cancel_and_wait([None, done])
    assert done.result() == 7  # left as it was


async def test_a_failing_task_does_not_raise_here() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_wait_is_bounded_by_the_timeout() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await release.wait()  # a cleanup that takes as long as it takes

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cancel_and_wait(task, within_s=0.05)
    assert loop.time() - started < 1.0
    assert not task.done()
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()


async def test_the_callers_own_cancellation_propagates() -> None:
    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.2)

    inner = asyncio.create_task(slow_cleanup())
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.wait([inner])
