"""A batch decoder light enough for pool tests (asr_tts.asr.pool): its worker functions run
in the pool's real worker processes. The "text" of an utterance is how many bytes it had."""

from __future__ import annotations

import os


def load() -> int:
    """The worker's pid (what a backend's load returns)."""
    return os.getpid()


def finish(pcm: bytes, first: bool, language: str | None) -> str:
    """The number of bytes heard."""
    return f"{len(pcm)} bytes"
