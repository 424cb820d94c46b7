"""Answer text to downlink frames, sentence by sentence, with one sentence of prefetch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncGenerator, Callable, Mapping

from asr_tts.audio import FrameEncoder
from asr_tts.cache import FrameCache, cache_key
from asr_tts.sentences import clean_for_speech, split_sentences
from asr_tts.tts import Pcm, TTSProvider, Voice

# The first segment of an answer is cut at a comma past this length: first audio sooner.
FIRST_SEGMENT_CHARS = 24


class Speaker:
    """Turns answer text into (sentence, frames) pairs; Opus and resampling run in an executor.

    `cache` keeps the frames of sentences already spoken; `on_fallback(name)` is called once per
    answer whose voice names a provider that is not registered (the default speaks instead);
    `on_synth(provider, seconds)` after every successful synthesis.
    """

    def __init__(
        self,
        providers: Mapping[str, TTSProvider],
        default: str,
        executor: concurrent.futures.Executor | None = None,
        *,
        cache: FrameCache | None = None,
        on_fallback: Callable[[str], None] | None = None,
        on_synth: Callable[[str, float], None] | None = None,
        first_max_chars: int | None = FIRST_SEGMENT_CHARS,
    ) -> None:
        if default not in providers:
            raise ValueError(f"default TTS provider {default!r} is not registered")
        self._providers = dict(providers)
        self._default = providers[default]
        self._executor = executor  # None: the loop's default executor
        self._cache = cache
        self._on_fallback = on_fallback
        self._on_synth = on_synth
        self._first_max_chars = first_max_chars

    def provider_for(self, voice: Voice) -> TTSProvider:
        """The provider the voice names if it is registered, else the default (PROTOCOL.md §2.2)."""
        if not voice.provider:
            return self._default
        return self._providers.get(voice.provider, self._default)

    async def sentences(
        self, text: str, voice: Voice, encoder: FrameEncoder
    ) -> AsyncGenerator[tuple[str, list[bytes]], None]:
        """Yield (sentence, frames) in order; use under contextlib.aclosing when stopping early.

        Sentence k+1 is synthesised while the caller sends sentence k, so the device hears no gap
        between sentences (PROTOCOL.md §1.6 paces the sending). Provider errors (TTSError)
        propagate and end the iteration.
        """
        parts = split_sentences(clean_for_speech(text), first_max_chars=self._first_max_chars)
        provider = self.provider_for(voice)
        wanted = voice.provider
        if parts and wanted and wanted not in self._providers and self._on_fallback is not None:
            self._on_fallback(wanted)
        pending: asyncio.Task[list[bytes]] | None = None
        try:
            for i, sentence in enumerate(parts):
                if pending is None:
                    pending = asyncio.create_task(self._frames(provider, sentence, voice, encoder))
                frames = await pending
                pending = None
                if i + 1 < len(parts):
                    pending = asyncio.create_task(
                        self._frames(provider, parts[i + 1], voice, encoder)
                    )
                yield sentence, frames
        finally:
            if pending is not None:
                pending.cancel()
                # asyncio.wait neither raises the task's outcome nor hides our own cancellation.
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved: its failure no longer matters to anyone

    async def _frames(
        self, provider: TTSProvider, sentence: str, voice: Voice, encoder: FrameEncoder
    ) -> list[bytes]:
        """The frames of one sentence: from the cache, else synthesised and encoded off the loop."""
        cache = self._cache  # compared with None: an empty FrameCache is falsy (__len__)
        key = cache_key(provider.name, voice, encoder.fmt, sentence)
        if cache is not None:
            cached = cache.get(key)
            if cached is not None:
                # These frames came from another answer's encoder. Opus packets decode on their
                # own; the device's decoder, primed by the packets before, shows at most a few
                # milliseconds of transient at the seam, and the encoder here, which skips this
                # sentence, does the same at the next one. PCM frames are exact either way.
                return list(cached)
        started = time.monotonic()
        pcm = await provider.synthesize(sentence, voice)
        if self._on_synth is not None:
            self._on_synth(provider.name, time.monotonic() - started)
        frames = await self._encode(encoder, pcm)
        if cache is not None:
            cache.put(key, frames)
        return frames

    async def _encode(self, encoder: FrameEncoder, pcm: Pcm) -> list[bytes]:
        """Run the encoder in the executor; a cancellation waits for the running encode."""
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, encoder.encode, pcm)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # A thread cannot be stopped; let the encode finish so that the encoder, which is
            # not thread-safe, is idle again when the cancellation reaches the caller.
            await asyncio.wait([job])
            raise
