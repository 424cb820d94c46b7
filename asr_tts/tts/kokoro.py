"""The offline "embedded" TTS provider: Kokoro-82M v1.0 (int8 ONNX) in worker processes.

onnxruntime holds no GIL while it runs, but a sentence costs 0.3-1.5 s of two cores and the
phonemiser (jieba, pypinyin, cn2an) is pure Python with ~50 MB of dictionaries: both live in
worker processes (asr_tts.tts.kokoro_worker), started with "spawn" like the embedded ASR's,
so the loop pays a pipe round trip per sentence. Workers start lazily, up to `pool_size`,
each loading the model in ~1 s (~350-600 MB resident); `threads` is onnxruntime's intra-op
thread count in each. A worker that dies is replaced and its sentence tried once more on a
new one; a call longer than `timeout_s` kills its worker (the slot is free at once) and fails
with TTSError. Nothing is fetched: the model comes from the installed part packages, checked
against pinned hashes (asr_tts.tts.kokoro_files).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from asr_tts import workerproc
from asr_tts.pcm import Pcm
from asr_tts.tts import kokoro_files as files
from asr_tts.tts import kokoro_worker as worker
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.sentences import split_sentences

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CALL_CHARS = 40  # a worker call speaks one clause of at most this many characters
_CLAUSE_GAP = bytes(2 * int(0.12 * files.SAMPLE_RATE))  # silence between clauses
DEFAULT_VOICES = {"zh": "jf_nezumi", "en": "mean"}  # the measured best per language


class _Worker(workerproc.WorkerProcess):
    """One model in a process of its own, one call at a time."""

    def __init__(self, threads: int, voices_dir: str | None) -> None:
        super().__init__()
        self.loaded: Future[int] = self.submit(worker.load, threads, voices_dir)

    def submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        try:
            return super().submit(fn, *args)
        except BrokenProcessPool as exc:
            self.broken = True
            raise TTSError("the Kokoro worker process died", reason="worker") from exc
        except (RuntimeError, OSError) as exc:
            self.broken = True
            raise TTSError(f"cannot start a Kokoro worker process: {exc}", reason="worker") from exc


class KokoroTTS:
    """TTS provider named "embedded": Kokoro, offline, Mandarin and English."""

    name = "embedded"

    def __init__(
        self,
        *,
        pool_size: int = 1,
        threads: int = 2,
        timeout_s: float = 30.0,
        voices: dict[str, str] | None = None,
        voices_dir: str | None = None,
    ) -> None:
        """Check the model files and the voices now; ModelFileError names a bad file."""
        if pool_size < 1 or threads < 1:
            raise ValueError("pool_size and threads must be at least 1")
        self._files = files.locate()
        files.check(self._files)
        extra = Path(voices_dir) if voices_dir else None
        self.voice_names = sorted(files.load_voices(self._files, extra))
        self._voices = dict(DEFAULT_VOICES)
        for lang, spec in (voices or {}).items():
            if spec:
                self._voices[lang] = self._known(spec) or self._voices[lang]
        self._threads = threads
        self._voices_dir = voices_dir
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._warned: set[str] = set()

    def _known(self, spec: str) -> str | None:
        """`spec` if every voice it names exists, else None (after one warning per spec)."""
        try:
            names = [] if spec == "mean" else [name for name, _ in files.parse_blend(spec)]
        except ValueError:
            names = [spec]
        unknown = [n for n in names if n not in self.voice_names]
        if not unknown:
            return spec
        if spec not in self._warned:
            self._warned.add(spec)
            log.warning("Kokoro has no voice %s: the default voice speaks", ", ".join(unknown))
        return None

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` (Han runs in Mandarin, Latin runs in English); TTSError on failure."""
        voices = dict(self._voices)
        if voice.voice_type and (spec := self._known(voice.voice_type)):
            voices = dict.fromkeys(voices, spec)
        speed = voice.speed_ratio if math.isfinite(voice.speed_ratio) else 1.0
        speed = max(0.5, min(2.0, speed))
        audio: list[bytes] = []
        skipped = ""
        # Clause by clause: a call is short, so a cancelled answer (an abort) leaves its worker
        # busy for a fraction of a second at most, and each call's memory stays small.
        for piece in split_sentences(text, max_chars=CALL_CHARS) or [text]:
            try:
                samples, dropped = await self._call(worker.synthesize, piece, voices, speed)
            except BrokenProcessPool:  # the worker died: once more on a new one
                samples, dropped = await self._call(worker.synthesize, piece, voices, speed)
            if samples and audio:
                audio.append(_CLAUSE_GAP)
            audio += [samples] if samples else []
            skipped += dropped
        if skipped:
            log.warning("Kokoro speaks Mandarin and English only: skipped %r", skipped[:40])
        return Pcm(b"".join(audio), files.SAMPLE_RATE)

    async def loaded_modules(self) -> list[str]:
        """The modules a worker has imported (the licence test looks for GPL ones)."""
        return await self._call(worker.modules)

    def worker_pids(self) -> list[int]:
        """The worker processes' ids."""
        return [pid for w in self._workers for pid in w.pids()]

    def close(self) -> None:
        """End every worker now (the relay has drained its answers by then) and wait, a few
        ms, for its pool's thread: on Python 3.11 a process pool still closing while the
        interpreter exits can fail in the exit hook (a write to a closed pipe)."""
        for w in self._workers:
            w.kill()
            w.join()
        self._workers.clear()
        self._idle.clear()

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run `fn(*args)` on a free worker within timeout_s; BrokenProcessPool if it died."""
        async with self._slots:
            w = self._take()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.wrap_future(w.loaded)
                    return await asyncio.wrap_future(w.submit(fn, *args))
            except TimeoutError as exc:
                w.kill()  # a call cannot be interrupted: free the slot for a new worker
                raise TTSError(
                    f"Kokoro gave no result within {self.timeout_s} s", reason="timeout"
                ) from exc
            except BrokenProcessPool:
                w.broken = True
                raise
            except files.ModelFileError as exc:
                w.broken = True
                raise TTSError(str(exc), reason="worker") from exc
            finally:
                self._give_back(w)

    def _take(self) -> _Worker:
        while self._idle:
            w = self._idle.pop()
            if w.usable:
                return w
            self._retire(w)
        w = _Worker(self._threads, self._voices_dir)
        self._workers.add(w)
        return w

    def _give_back(self, w: _Worker) -> None:
        if w.usable and w in self._workers:
            self._idle.append(w)
        else:
            self._retire(w)

    def _retire(self, w: _Worker) -> None:
        w.stop()
        self._workers.discard(w)
