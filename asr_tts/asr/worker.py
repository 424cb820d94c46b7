"""What every embedded-ASR worker process does first, whatever decoder it then loads.

asr_tts.asr.pool starts each worker with the "spawn" method and this module's init() as the
process pool's initializer; it imports only the standard library, so a worker imports no more
than the decoder module its calls name (asr_tts.asr.pocketsphinx_worker or
asr_tts.asr.whisper_worker).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Mapping


def init(env: Mapping[str, str]) -> None:
    """Set up a new worker: its environment, Ctrl-C is for the parent, it ends with its parent."""
    # Set before any decoder library is imported: some read their settings at import time.
    os.environ.update(env)
    # The parent stops its workers when it shuts down; a terminal's Ctrl-C reaches the whole
    # process group and would kill the decodes that shutdown lets finish.
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
