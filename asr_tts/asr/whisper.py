"""The offline "embedded" ASR provider: OpenAI's Whisper base, int8, on faster-whisper.

Multilingual; the relay uses it for Mandarin and English. Each decoder is a worker process
of the pool in asr_tts.asr.pool (asr_tts.asr.whisper_worker inside): CTranslate2 keeps its
`threads` cores busy for the whole decode (~0.9 s for a command on two threads: Whisper always
encodes a 30 s window), which no thread of the relay's process may do. The model files ship in
two PyPI wheels and are checked against pinned SHA-256 sums: once here when the provider is
built (check_model) and again by each worker as it reads them.

Batch: feed() only buffers, finish() decodes the whole utterance in one call. The language
of an utterance is the one open() is given ("en", "zh" or "auto"; a tag such as "zh-CN" or
"en-US,en;q=0.9" is reduced to its first language), else the provider's default; "auto"
chooses between `languages` only, by Whisper's own language probabilities. Mandarin comes out
in Simplified characters (OpenCC t2s).
"""

from __future__ import annotations

import os

from asr_tts.asr import whisper_worker
from asr_tts.asr.base import ASRStream
from asr_tts.asr.pool import Backend, DecoderPool

LANGUAGES = ("zh", "en")  # what "auto" chooses between
AUTO = "auto"
_checked: dict[tuple[str, ...], None] = {}  # model files already checked, by (path, size, mtime)


def check_model(model_dir: str = "") -> None:
    """Raise ASRError naming the first model file that is missing or not the pinned one.

    A file checked before in this process, unchanged since (size, mtime), is not hashed again.
    """
    paths = whisper_worker.model_files(model_dir)
    key = tuple(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    if key not in _checked:
        whisper_worker.verify(paths)
        _checked[key] = None


def language_of(tag: str | None) -> str | None:
    """The language ("zh", "en" or "auto") a configured or requested tag names, or None.

    Accepts what a device sends in Accept-Language: "zh-CN", "en-US,en;q=0.9", "cmn".
    """
    if not tag:
        return None
    first = tag.split(",")[0].split(";")[0].strip().lower().replace("_", "-")
    primary = first.split("-")[0]
    if primary in ("zh", "cmn"):
        return "zh"
    if primary in ("en", AUTO):
        return primary
    return None


class WhisperASR(DecoderPool):
    """ASR provider named "embedded": Whisper base in worker processes, Mandarin and English."""

    name = "embedded"

    def __init__(
        self,
        pool_size: int = 2,
        timeout_s: float = 20.0,
        language: str = AUTO,
        threads: int = 0,
        model_dir: str = "",
    ) -> None:
        default = language_of(language)
        if default is None:
            raise ValueError(f"language must be auto, zh or en, got {language!r}")
        self.default_language = default
        if threads < 1:  # one utterance alone decodes fastest on every core (up to 4)
            threads = min(4, os.cpu_count() or 1)
        backend = Backend(
            label="whisper",
            load=whisper_worker.load,
            load_args=(model_dir, threads, LANGUAGES),
            finish=whisper_worker.finish,
            env=whisper_worker.OFFLINE_ENV,
        )
        super().__init__(backend, pool_size=pool_size, timeout_s=timeout_s)

    def language(self, requested: str | None) -> str:
        """The language an utterance is decoded in: `requested` if usable, else the default."""
        return language_of(requested) or self.default_language

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Take a free decoder for an utterance in `language` (see language())."""
        return await super().open(language=self.language(language))
