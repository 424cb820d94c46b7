"""The offline "embedded" ASR provider: pocketsphinx's US English model, decoders in a pool.

Decoders are loaded lazily, up to `pool_size` (about 90 MB and 0.3-0.6 s each with the full
vocabulary, 28 MB and 0.1 s with a command grammar); an utterance holds one from open() to
finish() or cancel(). Decoding runs in a thread pool of the same size. pocketsphinx 5.1.1
holds the GIL while it decodes (two decoders in two threads take longer than one after the
other), so the threads keep the work off the event loop's turn but not off its core: the
loop waits for whichever decoder call is running.

- Full vocabulary (real-time factor 0.3-0.6 here): audio is decoded while it arrives, in
  60 ms calls (up to ~80-130 ms each), and the live cepstral mean carries over from one
  utterance to the next, as pocketsphinx does for live audio.
- Command grammar (real-time factor ~0.015): feed() only buffers; finish() decodes the
  whole utterance in one call (~15 ms per second of audio) with its own cepstral mean, so
  the same audio always gives the same text, whatever the decoder heard before. On
  espeak-ng commands that scored 55/57 from the first utterance on, where streaming scored
  51/57 on a fresh decoder (57/57 only once warmed up by earlier utterances).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pocketsphinx import Decoder

from asr_tts.asr import BYTES_PER_SECOND, MAX_UTTERANCE_S, ASRError, ASRStream

_SEARCH = "commands"
_CMN_SEARCH = "cmn"  # one word: a search that costs next to nothing while features are made
_WORD = re.compile(r"[a-z']+\Z")
_SLICE_BYTES = BYTES_PER_SECOND * 60 // 1000  # one decoder call: 60 ms of audio
_JOB_BYTES = BYTES_PER_SECOND // 4  # feed() hands audio to the decoder thread in 250 ms lots
_MAX_BYTES = MAX_UTTERANCE_S * BYTES_PER_SECOND
# Digital silence (all-zero samples, as espeak-ng or Opus DTX produce) has no log energy and
# drags the live cepstral mean; a -64 dBFS noise floor fixes it. Measured on espeak-ng
# commands with the grammar: 25/36 recognised without it, 33/36 with it.
_DITHER_RMS = 20.0


def command_grammar(phrases: Sequence[str]) -> str:
    """A JSGF grammar accepting one or more of `phrases` (each a word or a phrase) in a row."""
    alternatives: dict[str, None] = {}
    for phrase in phrases:
        words = phrase.lower().split()
        if not words or not all(_WORD.match(w) for w in words):
            raise ValueError(f"grammar entry {phrase!r} is not made of plain English words")
        alternatives[" ".join(words)] = None
    if not alternatives:
        raise ValueError("grammar_words is empty")
    rule = " | ".join(alternatives)
    return f"#JSGF V1.0;\ngrammar {_SEARCH};\npublic <utterance> = ( {rule} )+ ;\n"


def _load_decoder(grammar: str | None, vocabulary: frozenset[str]) -> Decoder:
    """Build one decoder (runs in a decoder thread)."""
    try:
        # FATAL: at ERROR, pocketsphinx prints a line for every utterance outside the grammar;
        # our own errors carry what went wrong.
        if grammar is None:
            # Without the second pass (fwdflat, bestpath) end_utt() takes 10 ms instead of
            # ~480 ms, all of it under the GIL; recognition was no worse on our test phrases.
            return Decoder(loglevel="FATAL", fwdflat=False, bestpath=False)
        decoder = Decoder(loglevel="FATAL", lm=None)
    except (RuntimeError, ValueError) as exc:
        raise ASRError(f"cannot load the pocketsphinx decoder: {exc}") from exc
    missing = sorted(w for w in vocabulary if decoder.lookup_word(w) is None)
    if missing:
        raise ASRError(f"grammar words missing from the pronunciation dictionary: {missing}")
    try:
        decoder.add_jsgf_string(_SEARCH, grammar)
        word = min(vocabulary)
        decoder.add_jsgf_string(_CMN_SEARCH, f"#JSGF V1.0;\ngrammar cmn;\npublic <w> = {word} ;\n")
        decoder.activate_search(_SEARCH)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ASRError(f"cannot load the command grammar: {exc}") from exc
    return decoder


class _Slot:
    """One decoder and its utterance state; used by one decoder thread at a time."""

    def __init__(self, decoder: Decoder, *, batch: bool) -> None:
        self.decoder = decoder
        self.batch = batch  # decode each utterance in one call at finish()
        self.fresh = True  # set when handed out: the next audio starts a new utterance
        self._in_utterance = False
        self._rng = np.random.default_rng(0)

    def _start(self) -> None:
        """Begin the utterance on the first audio after the decoder was handed out."""
        if self.fresh:
            if self._in_utterance:  # left over by a cancelled or timed-out stream
                self.decoder.end_utt()
            self.decoder.start_utt()
            self._in_utterance, self.fresh = True, False
            self._rng = np.random.default_rng(0)  # the same audio decodes the same way

    def _dither(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        x += self._rng.standard_normal(x.size, dtype=np.float32) * _DITHER_RMS
        return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()

    def process(self, pcm: bytes) -> None:
        """Decode more audio of the current utterance, one short call at a time."""
        self._start()
        data = self._dither(pcm)
        for i in range(0, len(data), _SLICE_BYTES):
            self.decoder.process_raw(data[i : i + _SLICE_BYTES], False, False)

    def _decode_whole(self, data: bytes) -> None:
        """Decode a whole utterance normalised with its own cepstral mean, in short calls.

        pocketsphinx holds the GIL in every call: one full_utt call with the command search
        (~15 ms per second of audio) would stall the event loop for as long. The mean comes
        from a full_utt pass under a one-word search (~3 ms per second of audio); the command
        search then runs with that mean on 60 ms slices, the GIL free between them.
        """
        d = self.decoder
        d.end_utt()  # the one _start() began, still empty: begin again under the cheap search
        d.activate_search(_CMN_SEARCH)
        d.start_utt()
        d.process_raw(data, False, True)
        cmn = d.get_cmn()
        d.end_utt()
        d.activate_search(_SEARCH)
        d.set_cmn(cmn)
        d.start_utt()
        for i in range(0, len(data), _SLICE_BYTES):
            d.process_raw(data[i : i + _SLICE_BYTES], False, False)

    def finish(self, pcm: bytes) -> str:
        """Decode the last audio, end the utterance and return the best hypothesis."""
        if self.batch:
            self._start()
            if pcm:
                self._decode_whole(self._dither(pcm))
        else:
            self.process(pcm)
        self.decoder.end_utt()
        self._in_utterance = False
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class EmbeddedASR:
    """ASR provider named "embedded": pocketsphinx, offline, US English only."""

    name = "embedded"

    def __init__(
        self,
        pool_size: int = 2,
        timeout_s: float = 20.0,
        grammar_words: Sequence[str] | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self._grammar = None if grammar_words is None else command_grammar(grammar_words)
        self._vocabulary = frozenset(w for p in grammar_words or () for w in p.lower().split())
        self._pool_size = pool_size
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            pool_size, thread_name_prefix="asr-embedded"
        )
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue(pool_size)
        self._created = 0

    async def open(self, *, language: str | None = None) -> ASRStream:
        """Take a free decoder, waiting up to timeout_s; `language` is ignored (US English)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                slot = await self._acquire()
        except TimeoutError as exc:
            raise ASRError(f"no free decoder within {self.timeout_s} s") from exc
        slot.fresh = True
        return _EmbeddedStream(self, slot)

    def close(self) -> None:
        """Refuse new work at shutdown; decodes already queued or running still finish."""
        # No cancel_futures: a cancelled job would look like a cancellation to its awaiter.
        self._executor.shutdown(wait=False)

    def submit(self, fn: Callable[..., Any], *args: object) -> concurrent.futures.Future[Any]:
        """Run `fn(*args)` in a decoder thread."""
        try:
            return self._executor.submit(fn, *args)
        except RuntimeError as exc:  # the pool is shut down
            raise ASRError(f"the decoder pool is closed: {exc}") from exc

    def give_back(self, slot: _Slot) -> None:
        """Return an idle decoder to the pool."""
        self._idle.put_nowait(slot)

    async def _acquire(self) -> _Slot:
        """An idle decoder, a new one while the pool is not full, else wait for one."""
        if self._idle.empty() and self._created < self._pool_size:
            self._created += 1
            return await self._load()
        return await self._idle.get()

    async def _load(self) -> _Slot:
        """Load a decoder in a decoder thread; a cancelled load still ends up in the pool."""
        try:
            future = asyncio.wrap_future(
                self.submit(_load_decoder, self._grammar, self._vocabulary)
            )
            decoder = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._adopt)
            raise
        except BaseException:
            self._created -= 1
            raise
        return _Slot(decoder, batch=self._grammar is not None)

    def _adopt(self, future: asyncio.Future[Decoder]) -> None:
        """Pool the decoder of a load nobody waits for any more, or forget the failed load."""
        if future.cancelled() or future.exception() is not None:
            self._created -= 1
        else:
            self.give_back(_Slot(future.result(), batch=self._grammar is not None))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Schedule `fn` on `loop` from any thread; nothing to do once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


class _EmbeddedStream:
    """One utterance on a pooled decoder; at most one decoder job runs at a time."""

    def __init__(self, owner: EmbeddedASR, slot: _Slot) -> None:
        self._owner = owner
        self._slot = slot
        self._pending = bytearray()
        self._received = 0
        self._job: concurrent.futures.Future[Any] | None = None
        self._closed = False
        self._released: asyncio.Future[None] | None = None

    async def feed(self, pcm: bytes) -> None:
        """Buffer `pcm`; when streaming, hand buffered audio to the idle decoder thread."""
        if self._closed:
            return
        job = self._job
        if job is not None and job.done() and not job.cancelled() and job.exception():
            raise ASRError(f"pocketsphinx failed: {job.exception()}")
        self._received += len(pcm)
        if self._received > _MAX_BYTES:
            raise ASRError(f"utterance longer than {MAX_UTTERANCE_S} s")
        self._pending += pcm
        streaming = not self._slot.batch
        if streaming and len(self._pending) >= _JOB_BYTES and (job is None or job.done()):
            self._job = self._owner.submit(self._slot.process, self._take())

    async def finish(self) -> str:
        """Decode what is left and return the text; the decoder goes back to the pool."""
        if self._closed:
            raise ASRError("the utterance is already finished or cancelled")
        self._closed = True
        try:
            async with asyncio.timeout(self._owner.timeout_s):
                if self._job is not None:
                    await asyncio.wrap_future(self._job)
                final: concurrent.futures.Future[str] = self._owner.submit(
                    self._slot.finish, self._take()
                )
                self._job = final
                return await asyncio.wrap_future(final)
        except TimeoutError as exc:
            raise ASRError(f"decoding took longer than {self._owner.timeout_s} s") from exc
        except (RuntimeError, ValueError) as exc:
            raise ASRError(f"pocketsphinx failed: {exc}") from exc
        finally:
            self._pending.clear()
            self._release()

    async def cancel(self) -> None:
        """Drop the utterance; returns once the decoder is back in the pool."""
        self._closed = True
        self._pending.clear()
        await asyncio.shield(self._release())

    def _take(self) -> bytes:
        """The buffered whole samples, removed from the buffer."""
        n = len(self._pending) - len(self._pending) % 2
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def _release(self) -> asyncio.Future[None]:
        """Give the decoder back once no job of this stream runs on it (only the first call)."""
        if self._released is None:
            loop = asyncio.get_running_loop()
            released: asyncio.Future[None] = loop.create_future()
            self._released = released

            def give_back() -> None:
                self._owner.give_back(self._slot)
                released.set_result(None)

            job = self._job
            if job is None or job.done():
                give_back()
            else:
                # A running decode cannot be interrupted; the decoder returns when it ends.
                job.add_done_callback(lambda _: _call_soon(loop, give_back))
        return self._released
