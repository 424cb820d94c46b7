"""What every speech worker process does first (started with "spawn" by its pool)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading


def init() -> None:
    """Set up a new worker: Ctrl-C is for the parent, and the worker ends with its parent."""
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
