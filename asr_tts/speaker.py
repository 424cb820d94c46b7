"""Answer text to downlink frames, sentence by sentence, with one sentence of prefetch."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncGenerator, Mapping

from asr_tts.audio import FrameEncoder
from asr_tts.sentences import clean_for_speech, split_sentences
from asr_tts.tts import TTSProvider, Voice


class Speaker:
    """Turns answer text into (sentence, frames) pairs; Opus and resampling run in an executor."""

    def __init__(
        self,
        providers: Mapping[str, TTSProvider],
        default: str,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if default not in providers:
            raise ValueError(f"default TTS provider {default!r} is not registered")
        self._providers = dict(providers)
        self._default = providers[default]
        self._executor = executor  # None: the loop's default executor

    def provider_for(self, voice: Voice) -> TTSProvider:
        """The provider the voice names if it is registered, else the default (PROTOCOL.md §2.2)."""
        if voice.provider is None:
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
        parts = split_sentences(clean_for_speech(text))
        provider = self.provider_for(voice)
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
        """Synthesise one sentence and encode it off the loop."""
        pcm = await provider.synthesize(sentence, voice)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, encoder.encode, pcm)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # A thread cannot be stopped; let the encode finish so that the encoder, which is
            # not thread-safe, is idle again when the cancellation reaches the caller.
            await asyncio.wait([job])
            raise
