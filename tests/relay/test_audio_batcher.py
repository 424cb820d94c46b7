"""AudioBatcher: streams' audio gathered into shared executor jobs, none lost or stuck."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from asr_tts.codec import FrameEncoder
from asr_tts.pcm import Pcm
from asr_tts.uplink import UplinkDecoder
from asr_tts.vad import SileroModel, VadStream
from protocol.audio_format import AudioFormat
from relay.device.audio_batcher import FULL_BATCH, AudioBatcher, AudioJob

PACKET = FrameEncoder(AudioFormat("opus", 16000, 1, 60)).encode(Pcm(bytes(1920), 16000))[0]


class CountingExecutor(ThreadPoolExecutor):
    """A one-thread pool that records how many jobs it ran."""

    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def job(model: SileroModel) -> AudioJob:
    return AudioJob(UplinkDecoder(AudioFormat()), VadStream(model), bytearray(), [PACKET, PACKET])


async def busy(
    batcher: AudioBatcher, model: SileroModel, jobs: int, gap_s: float
) -> list[AudioJob]:
    """Submit `jobs` jobs `gap_s` apart, as that many streams would; wait for all of them."""
    futures = []
    for _ in range(jobs):
        futures.append(batcher.submit(job(model)))
        await asyncio.sleep(gap_s)
    return await asyncio.wait_for(asyncio.gather(*futures), 5)


async def test_jobs_arriving_within_the_window_share_batches(model: SileroModel) -> None:
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=0.05)
        await busy(batcher, model, 30, 0.002)  # the batcher learns the rate
        before = pool.jobs
        done = await busy(batcher, model, 40, 0.002)
    # A batch gathers what arrives in 50 ms (~25 jobs at this rate, fewer on a slow machine).
    assert pool.jobs - before <= 8, pool.jobs - before
    for j in done:
        assert len(j.probs) == len(j.windows) == 3  # 120 ms of audio: three 32 ms windows
        assert all(0.0 <= p <= 1.0 for p in j.probs)


async def test_a_lone_stream_does_not_wait_for_company(model: SileroModel) -> None:
    # One device's packets come every 60 ms: nobody would share a 50 ms window with them.
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=0.05)
        await busy(batcher, model, 3, 0.06)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(batcher.submit(job(model)), 2)
        assert loop.time() - started < 0.03
    assert pool.jobs == 4


async def test_full_batches_do_not_wait_for_the_window(model: SileroModel) -> None:
    # Under load the batches fill up: nothing waits for a window, what is left over goes next.
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, max_batch=3, window_s=30.0)
        futures = [batcher.submit(job(model)) for _ in range(7)]
        done = await asyncio.wait_for(asyncio.gather(*futures), 2)
    assert len(done) == 7
    assert pool.jobs == 3


async def test_enough_streams_for_a_full_batch_do_not_wait(model: SileroModel) -> None:
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=30.0)
        futures = [batcher.submit(job(model)) for _ in range(FULL_BATCH)]
        await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert pool.jobs == 1


async def test_without_a_window_the_batch_is_one_loop_iteration(model: SileroModel) -> None:
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=0.0)
        first = [batcher.submit(job(model)) for _ in range(3)]
        await asyncio.wait_for(asyncio.gather(*first), 2)
        second = batcher.submit(job(model))
        await asyncio.wait_for(second, 2)
    assert pool.jobs == 2


async def test_jobs_queued_behind_a_batch_in_flight_go_next(model: SileroModel) -> None:
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=0.01)
        stuck = pool.submit(time.sleep, 0.1)  # the batch in flight cannot finish yet
        futures = [batcher.submit(job(model))]
        await asyncio.sleep(0.02)  # the first batch is flushed, and waits for the thread
        futures += [batcher.submit(job(model)) for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*futures), 2)
        assert stuck.done()
    assert pool.jobs == 3  # the sleep, the first job, then the four together


async def test_a_failed_batch_fails_each_of_its_jobs_and_the_next_batch_runs(
    model: SileroModel,
) -> None:
    other = SileroModel()  # streams of one batch must share a model: process_many refuses
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1, window_s=0.01)
        bad = [batcher.submit(job(model)), batcher.submit(job(other))]
        results = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), 2)
        assert all(isinstance(r, ValueError) for r in results)
        good = await asyncio.wait_for(batcher.submit(job(model)), 2)
    assert len(good.probs) == 3


async def test_push_to_talk_audio_is_decoded_but_not_scored(model: SileroModel) -> None:
    # A job without a VAD stream (manual mode) shares the batch with scored ones.
    with CountingExecutor() as pool:
        batcher = AudioBatcher(pool, max_in_flight=1)
        silent = AudioJob(UplinkDecoder(AudioFormat()), None, bytearray(), [PACKET, PACKET])
        scored = job(model)
        done = await asyncio.wait_for(
            asyncio.gather(batcher.submit(silent), batcher.submit(scored)), 2
        )
    assert pool.jobs == 1
    manual, auto = done
    assert len(manual.windows) == 3
    assert manual.windows == auto.windows  # the same audio, decoded the same way
    assert manual.probs == [0.0, 0.0, 0.0]
    assert len(auto.probs) == 3
