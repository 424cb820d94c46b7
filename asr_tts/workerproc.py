"""The speech worker processes: what each does first (`init`), and the parent's handle on
one (`WorkerProcess`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.process import BaseProcess
from typing import TypeVar

_T = TypeVar("_T")
# A fresh interpreter that imports only what it unpickles (the worker's own module).
_SPAWN = multiprocessing.get_context("spawn")


def init(env: Mapping[str, str] | None = None) -> None:
    """Set up a new worker: `env` in its environment (before any library that reads it is
    imported), Ctrl-C is for the parent, and the worker ends with its parent."""
    os.environ.update(env or {})
    # The parent stops its workers when it shuts down; a terminal's Ctrl-C reaches the whole
    # process group and would kill the calls that shutdown lets finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A parent killed outright (SIGKILL, the OOM killer) never stops its workers, and
        # a worker holds its own end of the call queue, so it would wait for calls forever.
        watch = threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True)
        watch.start()


def _exit_with(parent_sentinel: int) -> None:
    """Exit this process as soon as the parent process has ended."""
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(1)


class WorkerProcess:
    """One process of its own, running one call at a time: a single-worker process pool,
    started with "spawn" (never forked from a process that holds an event loop and threads).

    `submit` raises what ProcessPoolExecutor raises (BrokenProcessPool once the process has
    died, RuntimeError or OSError when it cannot start); each provider names these its own way.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._pool = ProcessPoolExecutor(
            1, mp_context=_SPAWN, initializer=init, initargs=(dict(env or {}),)
        )
        self._manager: threading.Thread | None = None
        self._processes: list[BaseProcess] = []
        self.broken = False  # its process died or its model failed to load: never reuse it

    @property
    def usable(self) -> bool:
        """Whether the worker can take a call."""
        # The pool's manager thread sets `_broken` as soon as it sees the process end.
        return not (self.broken or self._pool._broken)

    def submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        """Run `fn(*args)` in the worker process, after the calls already submitted."""
        return self._pool.submit(fn, *args)

    def pids(self) -> list[int]:
        """The id of the worker process, once it is started."""
        processes = self._processes or list((self._pool._processes or {}).values())
        return [p.pid for p in processes if p.pid is not None]

    def stop(self) -> None:
        """Make the process exit once its running call, if any, has ended; never blocks."""
        # shutdown() forgets the pool's thread and process: keep them, for join() and kill().
        self._manager = self._manager or self._manager_thread()
        self._processes = self._processes or list((self._pool._processes or {}).values())
        self._pool.shutdown(wait=False)

    def kill(self) -> None:
        """End the process now, in the middle of a call: its calls fail, it is never reused."""
        self.broken = True
        # ProcessPoolExecutor offers no public kill before Python 3.14 (kill_workers()).
        for process in self._processes or list((self._pool._processes or {}).values()):
            with contextlib.suppress(OSError):
                process.kill()
        self.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until the pool, stopped or killed, has shut down; whether it has. Python 3.11
        needs this before the interpreter exits: a pool still shutting down then can fail in
        the exit hook (a write to a closed pipe, printed as a traceback)."""
        if self._manager is not None:
            self._manager.join(timeout_s)
        return not self.running

    @property
    def running(self) -> bool:
        """Whether the pool's thread still runs (after stop(): until its call has ended)."""
        thread = self._manager or self._manager_thread()
        return thread is not None and thread.is_alive()

    def _manager_thread(self) -> threading.Thread | None:
        """The pool's thread that feeds the process and collects results (once started)."""
        thread: object = self._pool._executor_manager_thread  # typeshed has it wrong
        return thread if isinstance(thread, threading.Thread) else None
