"""FrameCache: least recently used entries go first, the byte bound holds; Speaker uses it."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.cache import CacheKey, FrameCache, cache_key
from asr_tts.tts.speaker import Speaker
from protocol.audio_format import AudioFormat
from tests.asr_tts.test_speaker import SENTENCES, TEXT, FakeTTS, collect, other_tasks, rms

OPUS = AudioFormat(sample_rate=24000)


def key(text: str, provider: str = "p", voice: Voice | None = None) -> CacheKey:
    """The key of `text` in the default voice and downlink."""
    return cache_key(provider, voice or Voice(), OPUS, text)


def frames(*sizes: int) -> tuple[bytes, ...]:
    """Frames of the given sizes."""
    return tuple(bytes([n % 256]) * n for n in sizes)


def test_a_stored_entry_comes_back_and_counts_as_a_hit() -> None:
    cache = FrameCache(100)
    assert cache.get(key("a")) is None
    cache.put(key("a"), list(frames(10, 20)))
    assert cache.get(key("a")) == frames(10, 20)
    assert (cache.hits, cache.misses, cache.bytes, len(cache)) == (1, 1, 30, 1)


def test_every_part_of_the_key_matters() -> None:
    cache = FrameCache(1000)
    cache.put(key("a"), frames(10))
    pcm = AudioFormat("pcm", 16000, 1, 60)
    misses = [
        key("b"),
        key("a", provider="q"),
        key("a", voice=Voice(voice_type="v")),
        key("a", voice=Voice(speed_ratio=1.5)),
        key("a", voice=Voice(pitch_ratio=0.5)),
        cache_key("p", Voice(), pcm, "a"),
    ]
    assert all(cache.get(k) is None for k in misses)
    # The provider a voice names is not part of the key: the resolved provider's name is.
    assert cache.get(key("a", voice=Voice(provider="elsewhere"))) == frames(10)


def test_the_least_recently_used_entry_is_evicted_first() -> None:
    cache = FrameCache(100)
    cache.put(key("a"), frames(40))
    cache.put(key("b"), frames(40))
    assert cache.get(key("a")) is not None  # now b is the least recently used
    cache.put(key("c"), frames(40))
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) == frames(40)
    assert cache.get(key("c")) == frames(40)
    assert (cache.bytes, cache.evictions, len(cache)) == (80, 1, 2)


def test_several_entries_make_room_for_a_big_one() -> None:
    cache = FrameCache(100)
    for text in "abcde":
        cache.put(key(text), frames(20))
    cache.put(key("big"), frames(50, 30))
    assert cache.bytes == 100
    assert [t for t in "abcde" if cache.get(key(t)) is not None] == ["e"]
    assert cache.evictions == 4


def test_an_entry_larger_than_the_bound_is_not_stored() -> None:
    cache = FrameCache(100)
    cache.put(key("a"), frames(60))
    cache.put(key("huge"), frames(60, 41))
    assert cache.get(key("huge")) is None
    assert cache.get(key("a")) == frames(60)  # nothing was evicted for it
    assert cache.bytes == 60


def test_an_entry_exactly_the_bound_fits() -> None:
    cache = FrameCache(100)
    cache.put(key("a"), frames(50, 50))
    assert cache.bytes == 100
    assert cache.get(key("a")) is not None


def test_replacing_an_entry_keeps_the_accounting_right() -> None:
    cache = FrameCache(100)
    cache.put(key("a"), frames(30))
    cache.put(key("b"), frames(30))
    cache.put(key("a"), frames(70))
    assert cache.bytes == 100
    assert cache.get(key("a")) == frames(70)
    assert cache.get(key("b")) == frames(30)
    assert cache.evictions == 0


def test_empty_frames_and_a_zero_bound_store_nothing() -> None:
    cache = FrameCache(0)
    cache.put(key("a"), frames(1))
    cache.put(key("b"), ())
    assert len(cache) == 0
    assert cache.bytes == 0


def test_a_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FrameCache(-1)


def test_the_stored_frames_do_not_alias_the_callers_list() -> None:
    cache = FrameCache(100)
    mine = list(frames(10))
    cache.put(key("a"), mine)
    mine.append(b"x" * 50)
    assert cache.get(key("a")) == frames(10)
    assert cache.bytes == 10


class CountingEncoder(FrameEncoder):
    """Counts encode calls."""

    def __init__(self) -> None:
        super().__init__(OPUS)
        self.encoded = 0

    def encode_frames(self, frames: list[bytes]) -> list[bytes]:
        """Encode and count."""
        self.encoded += 1
        return super().encode_frames(frames)


async def test_a_cached_sentence_skips_synthesis_and_encoding() -> None:
    fake, cache = FakeTTS(), FrameCache(1_000_000)
    spk = Speaker({"fake": fake}, "fake", cache=cache)
    first = await collect(spk.sentences(TEXT, Voice(), CountingEncoder()))
    encoder = CountingEncoder()
    again = await collect(spk.sentences(TEXT, Voice(), encoder))
    assert again == first
    assert fake.calls == SENTENCES
    assert encoder.encoded == 0
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    assert cache.bytes == sum(len(f) for _, frames in first for f in frames)


async def test_cached_opus_frames_play_inside_another_answer() -> None:
    # Cached packets come from another encoder; one decoder plays them within a new answer.
    fake, cache = FakeTTS(), FrameCache(1_000_000)
    spk = Speaker({"fake": fake}, "fake", cache=cache)
    await collect(
        spk.sentences("One here. Two here.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    )
    out = await collect(
        spk.sentences(
            "Zero here. Two here. Three.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000))
        )
    )
    assert fake.calls == ["One here.", "Two here.", "Zero here.", "Three."]
    decoder = OpusDecoder(24000)
    pcm = [decoder.decode(f) for _, frames in out for f in frames]
    assert all(len(p) == 2880 for p in pcm)
    assert rms(b"".join(pcm)) > 1000


async def test_the_cache_tells_voices_and_downlinks_apart() -> None:
    fake, cache = FakeTTS(), FrameCache(1_000_000)
    spk = Speaker({"fake": fake}, "fake", cache=cache)
    pcm_fmt = AudioFormat("pcm", 16000, 1, 60)
    for voice, fmt in [
        (Voice(), AudioFormat(sample_rate=24000)),
        (Voice(voice_type="other"), AudioFormat(sample_rate=24000)),
        (Voice(speed_ratio=1.2), AudioFormat(sample_rate=24000)),
        (Voice(), pcm_fmt),
        (Voice(), pcm_fmt),  # the only repeat
    ]:
        await collect(spk.sentences("Hello there.", voice, FrameEncoder(fmt)))
    assert len(fake.calls) == 4
    assert cache.hits == 1


async def test_failed_and_cancelled_sentences_are_not_cached() -> None:
    cache = FrameCache(1_000_000)
    failing = Speaker({"f": FakeTTS("f", fail=SENTENCES[1])}, "f", cache=cache)
    with pytest.raises(TTSError):
        await collect(
            failing.sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
    hanging = Speaker({"h": FakeTTS("h", hang=SENTENCES[1])}, "h", cache=cache)
    async with aclosing(
        hanging.sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    ) as it:
        await anext(it)
        await asyncio.sleep(0.01)
    assert len(cache) == 2  # the first sentence of each answer
    assert not other_tasks()
