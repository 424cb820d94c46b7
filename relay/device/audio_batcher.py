"""Decode + VAD for many streams per executor job (batched model calls): every listener of
the process submits its packets here, so Silero runs on batches and the loop stays free."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field

from asr_tts.uplink import AudioError, UplinkDecoder
from asr_tts.vad import VadStream

WINDOW_BYTES = VadStream.WINDOW_SAMPLES * 2
FULL_BATCH = 32  # streams per VAD batch past which Silero's cost per window stops falling


@dataclass(slots=True)
class AudioJob:
    """One stream's packets for one batch, and what the batch made of them."""

    decoder: UplinkDecoder
    vad: VadStream | None  # None: push-to-talk, nothing to score (probabilities are 0.0)
    carry: bytearray
    packets: list[bytes]
    windows: list[bytes] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    bad_packets: int = 0


class AudioBatcher:
    """Runs decode + VAD for many streams per executor job (batched model calls).

    A job waits up to `window_s` for others to share its batch, and no longer once FULL_BATCH
    jobs are waiting: Silero costs 2.4x per window alone what it costs in a batch of 25
    (docs/performance.md), and every executor job has its own overhead; beyond ~30 a bigger
    batch saves nothing and the wait only adds lag. Nor does a job wait when fewer than two
    others are expected within the window (a few devices: nothing to share, only delay).
    """

    def __init__(
        self,
        executor: Executor,
        max_in_flight: int = 2,
        max_batch: int = 512,
        window_s: float = 0.0,
    ) -> None:
        self._executor = executor
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._window_s = window_s
        self._pending: list[tuple[AudioJob, asyncio.Future[AudioJob]]] = []
        self._first_at = 0.0  # when the oldest pending job arrived (loop clock)
        self._last_at = 0.0  # when the last job arrived
        self._gap = 1.0  # moving average of the time between jobs, seconds
        self._in_flight = 0
        self._timer: asyncio.Handle | None = None

    def submit(self, job: AudioJob) -> asyncio.Future[AudioJob]:
        """Queue a stream's packets; the future completes when they are decoded and scored."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AudioJob] = loop.create_future()
        now = loop.time()
        self._gap += 0.2 * (min(now - self._last_at, 1.0) - self._gap)
        self._last_at = now
        if not self._pending:
            self._first_at = now
        self._pending.append((job, fut))
        if len(self._pending) >= min(self._max_batch, FULL_BATCH):
            self._schedule(loop, 0.0)
        elif self._timer is None:
            self._schedule(loop, self._window_s if self._window_s >= 2 * self._gap else 0.0)
        return fut

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Flush in `delay` seconds, or as soon as a job in flight finishes."""
        if self._in_flight >= self._max_in_flight:
            return  # _finished schedules the next flush
        if self._timer is not None:
            if delay > 0:
                return  # a flush is due already
            self._timer.cancel()
        # With no window, call_soon still gathers what else arrives in this loop iteration.
        self._timer = (
            loop.call_later(delay, self._flush) if delay > 0 else loop.call_soon(self._flush)
        )

    def _flush(self) -> None:
        self._timer = None
        if not self._pending or self._in_flight >= self._max_in_flight:
            return
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, _run_batch, [j for j, _ in batch])
        done.add_done_callback(lambda f: self._finished(f, batch))
        if self._pending:  # beyond max_batch: those have waited long enough
            self._first_at = loop.time() - self._window_s
            self._schedule(loop, 0.0)

    def _finished(
        self, f: asyncio.Future[None], batch: list[tuple[AudioJob, asyncio.Future[AudioJob]]]
    ) -> None:
        self._in_flight -= 1
        exc = None if f.cancelled() else f.exception()
        for job, fut in batch:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(job)
        if self._pending:
            loop = asyncio.get_running_loop()
            self._schedule(loop, self._first_at + self._window_s - loop.time())


def _run_batch(jobs: list[AudioJob]) -> None:
    # In an executor thread: libopus (ctypes) and onnxruntime release the GIL.
    scored: list[AudioJob] = []
    vads: list[VadStream] = []
    chunks: list[bytes] = []
    for job in jobs:
        for packet in job.packets:
            try:
                job.carry += job.decoder.decode(packet)
            except AudioError:
                job.bad_packets += 1
        whole = len(job.carry) // WINDOW_BYTES * WINDOW_BYTES
        chunk = bytes(job.carry[:whole])
        del job.carry[:whole]
        job.windows = [chunk[i : i + WINDOW_BYTES] for i in range(0, whole, WINDOW_BYTES)]
        if job.vad is None:
            job.probs = [0.0] * len(job.windows)
        else:
            scored.append(job)
            vads.append(job.vad)
            chunks.append(chunk)
    for job, probs in zip(scored, VadStream.process_many(vads, chunks), strict=True):
        job.probs = probs
