"""Answer text to downlink frames, sentence by sentence, with one sentence of prefetch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aioutil import cancel_and_wait
from asr_tts.codec import FrameEncoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import StreamingTTSProvider, TTSProvider, Voice, VoiceList
from asr_tts.tts.cache import CacheKey, FrameCache, cache_key
from asr_tts.tts.sentences import clean_for_speech, split_sentences

_T = TypeVar("_T")

# The first segment of an answer is cut at a comma past this length: first audio sooner.
FIRST_SEGMENT_CHARS = 24
# The first frames of an answer are encoded on their own and go out while the rest of the
# first segment encodes: Opus costs ~0.5 ms per 60 ms frame here, 10-20 ms for a segment.
HEAD_FRAMES = 4
# The rest of a first segment is encoded in pieces that double from this size, each sent as
# soon as it is encoded: with many answers starting at once their encodes take turns in the
# executor, and each device gets its next frames before its head (240 ms) has played.
FIRST_PIECE_FRAMES = 2 * HEAD_FRAMES

# (sentence, frames, whole): a None sentence continues the one before; `whole` is False
# when more frames of the same sentence follow.
Segment = tuple[str | None, list[bytes], bool]


@dataclass(slots=True)
class _Part:
    """One sentence's frames; `rest` makes the frames still to come, piece by piece (the first
    segment's, encoded or synthesised after its head), `stop` abandons them."""

    frames: list[bytes]
    rest: Callable[[], AsyncGenerator[list[bytes], None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None
    key: CacheKey | None = None
    shared: asyncio.Future[list[bytes]] | None = None  # others waiting for these frames


class Speaker:
    """Turns answer text into frames sentence by sentence; encoding runs in an executor.

    `cache` keeps the frames of sentences already spoken, and with it a sentence that several
    answers need at once is synthesised once: the others wait for its frames. `on_fallback(name)`
    is called once per answer whose voice names a provider that is not registered (the default
    speaks instead); `on_synth(provider, seconds)` after every successful synthesis;
    `on_encode(seconds)` after every executor encode.
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
        on_encode: Callable[[float], None] | None = None,
        first_max_chars: int | None = FIRST_SEGMENT_CHARS,
    ) -> None:
        if default not in providers:
            raise ValueError(f"default TTS provider {default!r} is not registered")
        self._providers = dict(providers)
        self.default = default
        self._default = providers[default]
        self._executor = executor  # None: the loop's default executor
        self._cache = cache
        self._inflight: dict[CacheKey, asyncio.Future[list[bytes]]] = {}
        self._on_fallback = on_fallback
        self._on_synth = on_synth
        self._on_encode = on_encode
        self._first_max_chars = first_max_chars

    def warm(self) -> None:
        """Start the providers' worker processes ahead of the first answer, for those that
        have any (Kokoro: one worker, its model loading in the background)."""
        self._each("warm")

    def close(self) -> None:
        """End the providers' worker processes, for those that have any."""
        self._each("close")

    def _each(self, method: str) -> None:
        """Call `method()` of every provider that has it, once per provider."""
        for provider in {id(p): p for p in self._providers.values()}.values():
            call = getattr(provider, method, None)
            if callable(call):
                call()

    async def voice_lists(self) -> dict[str, VoiceList]:
        """The voices of each provider by the name a business sends; a provider registered
        under two names ("embedded" and "espeak") is asked once."""
        asked: dict[int, VoiceList] = {}
        lists: dict[str, VoiceList] = {}
        for name, provider in self._providers.items():
            if id(provider) not in asked:
                asked[id(provider)] = await provider.voice_list()
            lists[name] = asked[id(provider)]
        return lists

    def provider_for(self, voice: Voice) -> TTSProvider:
        """The voice's provider if it is registered, else the default (docs/protocol.md §2.2)."""
        if not voice.provider:
            return self._default
        return self._providers.get(voice.provider, self._default)

    async def sentences(
        self, text: str, voice: Voice, encoder: FrameEncoder
    ) -> AsyncGenerator[tuple[str, list[bytes]], None]:
        """Yield (sentence, all its frames) in order; `segments` without the early head."""
        async with contextlib.aclosing(self.segments(text, voice, encoder)) as it:
            name, frames = "", []
            async for sentence, part, whole in it:
                if sentence is not None:
                    name = sentence
                frames.extend(part)
                if whole:
                    yield name, frames
                    frames = []

    async def segments(
        self, text: str, voice: Voice, encoder: FrameEncoder
    ) -> AsyncGenerator[Segment, None]:
        """Yield Segments in order; use under contextlib.aclosing when stopping early.

        The first sentence, when it is synthesised, comes as its first HEAD_FRAMES frames and
        then the rest, so the device hears it before the whole of it is encoded. Sentence k+1
        is synthesised while the caller sends sentence k, so the device hears no gap between
        sentences (docs/protocol.md §1.6 paces the sending). Provider errors (TTSError) propagate
        and end the iteration.
        """
        parts = split_sentences(clean_for_speech(text), first_max_chars=self._first_max_chars)
        provider = self.provider_for(voice)
        wanted = voice.provider
        if parts and wanted and wanted not in self._providers and self._on_fallback is not None:
            self._on_fallback(wanted)
        pending: asyncio.Task[_Part] | None = None
        part: _Part | None = None

        def prefetch(index: int) -> None:
            # The next sentence is made once this one's frames are all encoded (the encoder's
            # Opus state runs in order), however slowly the caller takes them.
            nonlocal pending
            if index < len(parts):
                pending = asyncio.create_task(
                    self._start(provider, parts[index], voice, encoder, 0)
                )

        try:
            for i, sentence in enumerate(parts):
                if pending is None:
                    head = HEAD_FRAMES if i == 0 else 0
                    pending = asyncio.create_task(
                        self._start(provider, sentence, voice, encoder, head)
                    )
                part = await pending
                pending = None
                if part.rest is None:
                    frames, part = part.frames, None
                    prefetch(i + 1)
                    yield sentence, frames, True
                    continue
                # The head goes out while the rest is made; each piece of it as it is ready.
                yield sentence, part.frames, False
                frames = list(part.frames)
                rest = _ahead(part.rest(), functools.partial(prefetch, i + 1))
                async with contextlib.aclosing(rest):
                    async for piece in rest:
                        frames.extend(piece)
                        yield None, piece, False
                part.frames = frames
                self._settle(part, None)
                part = None
                yield None, [], True
        finally:
            if part is not None:  # stopped between a first segment's head and its rest
                self._settle(part, asyncio.CancelledError())
                if part.stop is not None:
                    await part.stop()
            if pending is not None:
                await cancel_and_wait(pending)
                if not pending.cancelled():
                    pending.exception()  # retrieved: its failure no longer matters to anyone

    async def _start(
        self, provider: TTSProvider, sentence: str, voice: Voice, encoder: FrameEncoder, head: int
    ) -> _Part:
        """A sentence's frames: from the cache, from an answer already making them, or
        synthesised and encoded off the loop (only the first `head` frames if `head`)."""
        cache = self._cache  # compared with None: an empty FrameCache is falsy (__len__)
        key = cache_key(provider.name, voice, encoder.fmt, sentence)
        while cache is not None:
            cached = cache.get(key)
            if cached is not None:
                # These frames came from another answer's encoder. Opus packets decode on their
                # own; the device's decoder, primed by the packets before, shows at most a few
                # milliseconds of transient at the seam, and the encoder here, which skips this
                # sentence, does the same at the next one. PCM frames are exact either way.
                return _Part(list(cached))
            shared = self._inflight.get(key)
            if shared is None:
                break
            try:
                return _Part(list(await asyncio.shield(shared)))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not shared.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The answer making these frames stopped; look again, or make them here.
        part = _Part([], key=key)
        if cache is not None:
            part.shared = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            if head and isinstance(provider, StreamingTTSProvider):
                await self._stream_head(provider, sentence, voice, encoder, head, part)
            else:
                started = time.monotonic()
                pcm = await provider.synthesize(sentence, voice)
                self._synthesised(provider, started)
                part.frames, rest = await self._encode(_encode_head, encoder, pcm, head)
                if rest is not None:
                    part.rest = functools.partial(self._encode_pieces, encoder, rest)
        except BaseException as exc:
            self._settle(part, exc)
            raise
        if part.rest is None:
            self._settle(part, None)
        return part

    def _synthesised(self, provider: TTSProvider, started: float) -> None:
        if self._on_synth is not None:
            self._on_synth(provider.name, time.monotonic() - started)

    async def _stream_head(
        self,
        provider: StreamingTTSProvider,
        sentence: str,
        voice: Voice,
        encoder: FrameEncoder,
        head: int,
        part: _Part,
    ) -> None:
        """The first `head` frames of a sentence as soon as the provider has streamed their
        audio; the rest of its audio is read and encoded by `part.rest`. `on_synth` reports
        the time to the head's audio, the part of synthesis the device waits for."""
        started = time.monotonic()
        chunks = provider.stream(sentence, voice)
        try:
            pcm = await _read_at_least(chunks, head * encoder.fmt.frame_duration_ms / 1000)
        except BaseException:
            await chunks.aclose()
            raise
        self._synthesised(provider, started)
        if pcm.complete:  # the whole sentence came before its head was due
            await chunks.aclose()
            part.frames, rest = await self._encode(_encode_head, encoder, pcm.head, head)
            if rest is not None:
                part.rest = functools.partial(self._encode_pieces, encoder, rest)
            return
        part.stop = chunks.aclose
        part.frames = await self._encode(encoder.encode, pcm.head)
        part.rest = functools.partial(self._stream_rest, chunks, pcm.rest, encoder)

    async def _stream_rest(
        self, chunks: AsyncGenerator[Pcm, None], first: Pcm, encoder: FrameEncoder
    ) -> AsyncGenerator[list[bytes], None]:
        """The frames of the audio after a streamed head: `first`, then what the stream brings."""
        async with contextlib.aclosing(chunks):
            rest = [first.samples] + [chunk.samples async for chunk in chunks]
        yield await self._encode(encoder.encode, Pcm(b"".join(rest), first.sample_rate))

    async def _encode_pieces(
        self, encoder: FrameEncoder, raw: list[bytes]
    ) -> AsyncGenerator[list[bytes], None]:
        """Encode `raw` frames in order: FIRST_PIECE_FRAMES, then twice as many each time,
        one executor call a piece."""
        size, i = FIRST_PIECE_FRAMES, 0
        while i < len(raw):
            yield await self._encode(encoder.encode_frames, raw[i : i + size])
            i += size
            size *= 2

    def _settle(self, part: _Part, exc: BaseException | None) -> None:
        """Cache a finished sentence and hand it to the answers waiting for it, or fail them."""
        shared, part.shared = part.shared, None
        if shared is None or part.key is None:
            return
        if self._inflight.get(part.key) is shared:
            del self._inflight[part.key]
        if exc is None:
            if self._cache is not None:
                self._cache.put(part.key, part.frames)
            shared.set_result(part.frames)
        elif isinstance(exc, asyncio.CancelledError):
            shared.cancel()  # the waiters make the sentence themselves
        else:
            shared.set_exception(exc)
            shared.exception()  # retrieved: no waiter is not an error

    async def _encode(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run an encoder step in the executor; a cancellation waits for the running step."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        job = loop.run_in_executor(self._executor, fn, *args)
        try:
            result = await asyncio.shield(job)
        except asyncio.CancelledError:
            # A thread cannot be stopped; let the encode finish so that the encoder, which is
            # not thread-safe, is idle again when the cancellation reaches the caller.
            await asyncio.wait([job])
            raise
        if self._on_encode is not None:
            self._on_encode(time.monotonic() - started)
        return result


async def _ahead(
    pieces: AsyncGenerator[list[bytes], None], then: Callable[[], None]
) -> AsyncGenerator[list[bytes], None]:
    """The pieces of `pieces`, made in a task of their own ahead of the caller however slowly
    it takes them; `then()` is called once all are made (not when making them fails, whose
    error is raised here after the pieces made before it)."""
    queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()

    async def fill() -> None:
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    queue.put_nowait(piece)
            then()
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(fill())
    try:
        while (piece := await queue.get()) is not None:
            yield piece
        await task
    finally:
        await cancel_and_wait(task)


@dataclass(frozen=True, slots=True)
class _Streamed:
    """The start of a streamed sentence: `head` (`seconds` of it, or all there was if
    `complete`) and the audio received past it."""

    head: Pcm
    rest: Pcm
    complete: bool


async def _read_at_least(chunks: AsyncGenerator[Pcm, None], seconds: float) -> _Streamed:
    """Read `chunks` until they hold `seconds` of audio, or until they end."""
    got: list[bytes] = []
    rate, size = 0, 0
    while rate == 0 or size < 2 * round(seconds * rate):
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        rate = chunk.sample_rate
        got.append(chunk.samples)
        size += len(chunk.samples)
    samples = b"".join(got)
    if rate == 0 or size < 2 * round(seconds * rate):
        return _Streamed(Pcm(samples, rate or 1), Pcm(b"", rate or 1), True)
    cut = 2 * round(seconds * rate)
    return _Streamed(Pcm(samples[:cut], rate), Pcm(samples[cut:], rate), False)


def _encode_head(
    encoder: FrameEncoder, pcm: Pcm, head: int
) -> tuple[list[bytes], list[bytes] | None]:
    """Encode `pcm` whole, or (head > 0) its first `head` frames and return the rest raw."""
    raw = encoder.cut(pcm)
    if len(raw) <= 2 * head or head <= 0:
        return encoder.encode_frames(raw), None
    return encoder.encode_frames(raw[:head]), raw[head:]
