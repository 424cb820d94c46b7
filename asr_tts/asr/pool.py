"""A bounded pool of decoders, each in a worker process of its own: the embedded recognisers
(asr_tts.asr.whisper, asr_tts.asr.pocketsphinx) are one `Backend` each on this pool.

The decoders hold the GIL (pocketsphinx) or whole cores (CTranslate2) while they decode; in a
thread of this process a call stalled the event loop for its whole length (pocketsphinx,
bench/asr_loop_stall.py: 40-60 ms at a time, 100-380 ms to load a decoder). So each decoder
lives in a worker process of its own, started with "spawn", never forked from this process,
which holds an event loop and threads: a call costs the loop a pipe round trip.

Workers start lazily, up to `pool_size`; the spawn itself blocks the loop 10-15 ms. An
utterance holds a worker from open() to finish() or cancel(). A worker that dies (killed,
crashed) fails the utterance in flight with ASRError and is never used again: the next open()
starts a new one in its place. A finish() that takes longer than `timeout_s` kills its worker
the same way. close() stops every worker once its running call, if any, has ended (one still
loading is ended at once); a worker also exits when this process dies. multiprocessing adds
one small helper process, its resource tracker, for as long as this process lives.

A backend either decodes audio while it arrives (`process`, called with 250 ms lots) or takes
the whole utterance in one `finish` call (batch). A batch utterance may be decoded early
(start_early, at a pause in speech) on its own worker: finish() returns that text if it is
kept; when speech went on, the early call runs to its end, ignored, and finish() decodes the
whole utterance after it. An utterance never has more than one call queued on its worker, so
early recognition never holds a second worker nor piles up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asr_tts import workerproc
from asr_tts.asr.base import BYTES_PER_SECOND, MAX_UTTERANCE_S, ASRError, ASRStream

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_JOB_BYTES = BYTES_PER_SECOND // 4  # feed() hands audio to a streaming worker in 250 ms lots
_MAX_BYTES = MAX_UTTERANCE_S * BYTES_PER_SECOND

# In the worker: (pcm, first call of the utterance, language) -> None or the text.
Process = Callable[[bytes, bool, str | None], None]
Finish = Callable[[bytes, bool, str | None], str]


@dataclass(frozen=True, slots=True)
class Backend:
    """What a worker process runs: module-level functions of a worker module, and their setup."""

    label: str  # names the decoder in error messages
    load: Callable[..., int]  # load(*load_args) builds the decoder, returns the worker's pid
    load_args: tuple[object, ...]
    finish: Finish
    process: Process | None = None  # None: batch, the whole utterance goes to finish()
    env: Mapping[str, str] = field(default_factory=dict)  # set in the worker before its imports


class _Worker(workerproc.WorkerProcess):
    """One decoder in a process of its own, one call at a time."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend.env)
        self._label = backend.label
        self._stopped = False
        # Starts the process (a few ms on the caller's thread), then loads the decoder in it.
        try:
            self.loaded: Future[int] = self.submit(backend.load, *backend.load_args)
        except ASRError:
            self.stop()
            raise

    def submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        """Run `fn(*args)` in the worker process, after the calls already submitted."""
        if self._stopped:
            raise ASRError("the decoder pool is closed")
        try:
            return super().submit(fn, *args)
        except BrokenProcessPool as exc:
            raise self.error(exc) from exc
        except (RuntimeError, OSError) as exc:  # the process cannot start
            raise ASRError(f"cannot start a decoder process: {exc}", reason="worker") from exc

    def error(self, exc: BaseException) -> ASRError:
        """The ASRError for a call that failed with `exc`; a dead process breaks the worker.
        Whatever it was (the reason does not survive the trip from the worker), the worker
        failed."""
        if isinstance(exc, ASRError):  # raised in the worker, with its own message
            return ASRError(str(exc), reason="worker")
        if isinstance(exc, BrokenProcessPool):
            self.broken = True
            return ASRError("the decoder process died", reason="worker")
        return ASRError(f"{self._label} failed: {exc}", reason="worker")

    def stop(self) -> None:
        """Make the process exit once its running call, if any, has ended; never blocks."""
        self._stopped = True
        super().stop()


class DecoderPool:
    """An ASR provider: up to `pool_size` decoders of `backend`, one utterance on each."""

    name = "embedded"

    def __init__(self, backend: Backend, pool_size: int = 2, timeout_s: float = 20.0) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.backend = backend
        self.timeout_s = timeout_s
        self._permits = asyncio.Semaphore(pool_size)  # one per utterance or worker starting
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()  # started and not stopped: close() stops them
        self._closing: list[_Worker] = []  # stopped by close(): wait_closed() joins them
        self._closed = False
        self._warming: asyncio.Task[None] | None = None

    @property
    def batch(self) -> bool:
        """Whether an utterance is decoded in one call at finish()."""
        return self.backend.process is None

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Take a free decoder, waiting up to timeout_s; `language` goes to the decoder."""
        if self._closed:
            raise ASRError("the decoder pool is closed")
        try:
            async with asyncio.timeout(self.timeout_s):
                worker = await self._acquire()
        except TimeoutError as exc:
            raise ASRError(f"no free decoder within {self.timeout_s} s", reason="worker") from exc
        return _PooledStream(self, worker, language)

    def warm(self) -> None:
        """Start one decoder now, in the background, so that the first utterance does not
        wait for its load (Whisper: 1-3 s, far more on a busy machine). The warm-up waits for
        the load however long it takes (`timeout_s` bounds an utterance's wait, not a load);
        a failed load is logged and the next open() tries again; a pool closed meanwhile (a
        quick stop) is not a failure."""

        async def start() -> None:
            try:
                worker = await self._acquire()
            except ASRError as exc:
                if not self._closed:
                    log.warning("%s: no decoder started ahead of use: %s", self.backend.label, exc)
                return
            self.give_back(worker)

        if self._warming is None:
            self._warming = asyncio.get_running_loop().create_task(start())

    def close(self) -> None:
        """Refuse new work and stop the worker processes: each after its running call; one
        still loading its model is ended at once (nothing waits for it). Then await
        `wait_closed()` before the interpreter exits."""
        self._closed = True
        self._idle.clear()
        for worker in self._workers:
            if worker.loaded.done():
                worker.stop()
            else:
                worker.kill()
        self._closing.extend(self._workers)
        self._workers.clear()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """After close(): wait until every worker process has exited, killing one whose
        running call lasts past `timeout_s`. On Python 3.11 a process pool still shutting
        down while the interpreter exits can fail in its exit hook (a traceback on stderr)."""
        closing, self._closing = self._closing, []

        def join() -> None:
            deadline = time.monotonic() + timeout_s
            for worker in closing:
                if not worker.join(max(0.0, deadline - time.monotonic())):
                    worker.kill()
                    worker.join()

        await asyncio.to_thread(join)

    def give_back(self, worker: _Worker) -> None:
        """Take a worker back after an utterance: idle for the next one, or stopped if broken."""
        if worker.usable and not self._closed:
            self._idle.append(worker)
        else:
            self._retire(worker)
        self._permits.release()

    def _retire(self, worker: _Worker) -> None:
        worker.stop()
        self._workers.discard(worker)

    async def _acquire(self) -> _Worker:
        """An idle worker, a new one while the pool is not full, else wait for one."""
        await self._permits.acquire()
        if self._closed:  # while this open() waited
            self._permits.release()
            raise ASRError("the decoder pool is closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.usable:
                return worker
            self._retire(worker)  # its process died while idle: a new one takes its place
        try:
            worker = _Worker(self.backend)
        except BaseException:
            self._permits.release()
            raise
        self._workers.add(worker)
        loaded = asyncio.wrap_future(worker.loaded)
        try:
            await asyncio.shield(loaded)
        except asyncio.CancelledError:
            # Nobody waits any more: the worker joins the pool once loaded, holding its permit
            # until then, so that the pool never starts more than pool_size workers.
            loaded.add_done_callback(lambda _: self._adopt(worker))
            raise
        except Exception as exc:  # whatever the load raised, in the worker or on the way
            self._adopt(worker)
            raise worker.error(exc) from exc
        if self._closed:  # while it loaded
            self.give_back(worker)
            raise ASRError("the decoder pool is closed")
        return worker

    def _adopt(self, worker: _Worker) -> None:
        """Pool a worker whose load ended, or stop it if the load failed."""
        if _failure(worker.loaded) is not None:
            worker.broken = True
        self.give_back(worker)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Schedule `fn` on `loop` from any thread; nothing to do once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


def _failure(job: Future[Any]) -> BaseException | None:
    """The exception a finished call raised, if any."""
    return None if job.cancelled() else job.exception()


class _PooledStream:
    """One utterance on a pooled worker; at most one call of it runs at a time."""

    def __init__(self, owner: DecoderPool, worker: _Worker, language: str | None) -> None:
        self._owner = owner
        self._worker = worker
        self._language = language
        self._pending = bytearray()
        self._received = 0
        self._first = True  # the next call begins the utterance in the worker
        self._job: Future[Any] | None = None
        self._early: Future[str] | None = None  # a decode of the audio so far, kept for finish()
        self._closed = False
        self._released: asyncio.Future[None] | None = None

    async def feed(self, pcm: bytes) -> None:
        """Buffer `pcm`; when streaming, hand buffered audio to the idle worker."""
        if self._closed:
            return
        job = self._job
        process = self._owner.backend.process
        # A streaming call's failure ends the utterance; a batch one's (early) waits for finish().
        exc = _failure(job) if process is not None and job is not None and job.done() else None
        if exc is not None:
            raise self._worker.error(exc) from exc
        self._received += len(pcm)
        if self._received > _MAX_BYTES:
            raise ASRError(f"utterance longer than {MAX_UTTERANCE_S} s")
        self._pending += pcm
        if process is not None and len(self._pending) >= _JOB_BYTES and (job is None or job.done()):
            self._job = self._call(process)

    async def finish(self) -> str:
        """Decode what is left and return the text; the worker goes back to the pool."""
        if self._closed:
            raise ASRError("the utterance is already finished or cancelled")
        self._closed = True
        try:
            async with asyncio.timeout(self._owner.timeout_s):
                if self._early is not None:
                    return await asyncio.wrap_future(self._early)
                if self._job is not None and not self._owner.batch:
                    await asyncio.wrap_future(self._job)
                final: Future[str] = self._call(self._owner.backend.finish)
                self._job = final
                return await asyncio.wrap_future(final)
        except TimeoutError as exc:
            # A decode cannot be interrupted: end its process, so that the pool's slot is
            # free at once (a new worker takes it) instead of when the decode gives up.
            self._worker.kill()
            raise ASRError(
                f"decoding took longer than {self._owner.timeout_s} s", reason="timeout"
            ) from exc
        except Exception as exc:  # whatever the call raised, in the worker or on the way
            raise self._worker.error(exc) from exc
        finally:
            self._pending.clear()
            self._release()

    def start_early(self) -> bool:
        """Begin decoding the audio so far (batch only), keeping it for finish(); not begun
        while a call of this utterance still runs (one queued call per utterance at most)."""
        job = self._job
        if self._closed or not self._owner.batch or (job is not None and not job.done()):
            return False
        n = len(self._pending) - len(self._pending) % 2
        try:
            early = self._worker.submit(
                self._owner.backend.finish, bytes(self._pending[:n]), True, self._language
            )
        except ASRError:
            return False  # the worker is gone: finish() reports it
        self._early = self._job = early
        return True

    def discard_early(self) -> None:
        """Speech went on after the early audio: its text is not the utterance's."""
        self._early = None

    async def cancel(self) -> None:
        """Drop the utterance; returns once the worker is back in the pool."""
        self._closed = True
        self._pending.clear()
        await asyncio.shield(self._release())

    def _call(self, fn: Callable[[bytes, bool, str | None], _T]) -> Future[_T]:
        """Hand the buffered whole samples to `fn` in the worker."""
        n = len(self._pending) - len(self._pending) % 2
        data = bytes(self._pending[:n])
        del self._pending[:n]
        first, self._first = self._first, False
        return self._worker.submit(fn, data, first, self._language)

    def _release(self) -> asyncio.Future[None]:
        """Give the worker back once no call of this stream runs on it (only the first call)."""
        if self._released is None:
            loop = asyncio.get_running_loop()
            released: asyncio.Future[None] = loop.create_future()
            self._released = released

            def give_back() -> None:
                self._owner.give_back(self._worker)
                released.set_result(None)

            job = self._job
            if job is None or job.done():
                give_back()
            else:
                # A running call cannot be interrupted; the worker returns when it ends.
                job.add_done_callback(lambda _: _call_soon(loop, give_back))
        return self._released
