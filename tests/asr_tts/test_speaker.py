"""Speaker: sentences in order, frames the device can decode, and a clean stop."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr_tts.codec import FrameEncoder, OpusDecoder
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, TTSProvider, Voice, VoiceList
from asr_tts.tts.cache import FrameCache
from asr_tts.tts.espeak import EmbeddedTTS
from asr_tts.tts.speaker import FIRST_PIECE_FRAMES, HEAD_FRAMES, Speaker
from protocol.audio_format import AudioFormat

SECONDS_PER_CHAR = 0.02


def tone(seconds: float, rate: int = 16000) -> Pcm:
    """A 440 Hz tone."""
    t = np.arange(round(seconds * rate)) / rate
    return Pcm((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes(), rate)


def rms(samples: bytes) -> float:
    """Root mean square of s16le samples."""
    x = np.frombuffer(samples, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def expected_frames(sentence: str) -> int:
    """Frames of 60 ms for the fake's audio of this sentence."""
    return math.ceil(round(len(sentence) * SECONDS_PER_CHAR * 1000) / 60)


class FakeTTS:
    """A provider whose audio length follows the text, and which can hang, lag or fail."""

    def __init__(
        self,
        name: str = "fake",
        *,
        hang: str | None = None,
        fail: str | None = None,
        delays: dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self.hang, self.fail, self.delays = hang, fail, delays or {}
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.called = asyncio.Event()
        self.listed = 0

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Return a tone as long as the text, after the configured delay."""
        self.calls.append(text)
        self.called.set()
        try:
            if text == self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delays.get(text, 0))
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise
        if text == self.fail:
            raise TTSError("provider down")
        return tone(len(text) * SECONDS_PER_CHAR)

    async def voice_list(self) -> VoiceList:
        """One voice named after the provider."""
        self.listed += 1
        return VoiceList("fake", (self.name,), {"*": self.name})


def speaker(
    *providers: TTSProvider, executor: ThreadPoolExecutor | None = None, **options: Any
) -> Speaker:
    """A Speaker whose default is the first provider."""
    return Speaker({p.name: p for p in providers}, providers[0].name, executor, **options)


async def collect(items: AsyncIterator[tuple[str, list[bytes]]]) -> list[tuple[str, list[bytes]]]:
    """Every (sentence, frames) pair."""
    return [item async for item in items]


def other_tasks() -> set[asyncio.Task[object]]:
    """Tasks still alive besides the test itself."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def child_processes() -> set[int]:
    """Live or zombie children of this process."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text()
        except FileNotFoundError:  # a thread that ended after the listing (a pool's, say)
            continue
        pids.update(int(p) for p in children.split())
    return pids


TEXT = "First sentence. The second one is longer! 第三句。"
SENTENCES = ["First sentence.", "The second one is longer!", "第三句。"]


async def test_sentences_come_in_order_with_decodable_frames() -> None:
    # The first sentence is the slowest to synthesise; order must not depend on timing.
    fake = FakeTTS(delays={SENTENCES[0]: 0.05})
    out = await collect(
        speaker(fake).sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    )
    assert [s for s, _ in out] == SENTENCES
    decoder = OpusDecoder(24000)
    for sentence, frames in out:
        assert len(frames) == expected_frames(sentence)
        pcm = [decoder.decode(f) for f in frames]
        assert all(len(p) == 2880 for p in pcm)
        assert rms(b"".join(pcm)) > 1000


async def test_pcm_downlink_frames() -> None:
    fmt = AudioFormat("pcm", 16000, 1, 60)
    out = await collect(speaker(FakeTTS()).sentences("Hello there.", Voice(), FrameEncoder(fmt)))
    ((sentence, frames),) = out
    assert len(frames) == expected_frames(sentence)
    assert all(len(f) == 1920 for f in frames)


async def test_prefetch_runs_exactly_one_sentence_ahead() -> None:
    fake = FakeTTS()
    text = "One. Two. Three. Four."
    async with aclosing(
        speaker(fake).sentences(text, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    ) as it:
        first = await anext(it)
        assert first[0] == "One."
        await asyncio.sleep(0.05)  # the caller is busy sending sentence one
        assert fake.calls == ["One.", "Two."]
        rest = [s async for s, _ in it]
    assert rest == ["Two.", "Three.", "Four."]
    assert fake.calls == ["One.", "Two.", "Three.", "Four."]


async def test_unknown_provider_falls_back_to_the_default_and_is_reported() -> None:
    reported: list[str] = []
    default, huoshan = FakeTTS("embedded"), FakeTTS("huoshan")
    spk = speaker(default, huoshan, on_fallback=reported.append)
    assert spk.provider_for(Voice()) is default
    assert spk.provider_for(Voice(provider="nope")) is default
    assert spk.provider_for(Voice(provider="huoshan")) is huoshan
    for voice in (Voice(provider="nope"), Voice(provider="huoshan"), Voice(), Voice(provider="")):
        await collect(spk.sentences("Hi. Yo.", voice, FrameEncoder(AudioFormat(sample_rate=24000))))
    await collect(
        spk.sentences("😀", Voice(provider="gone"), FrameEncoder(AudioFormat(sample_rate=24000)))
    )
    assert reported == ["nope"]  # two sentences, one answer; nothing said, nothing fell back
    assert default.calls == ["Hi.", "Yo."] * 3
    assert huoshan.calls == ["Hi.", "Yo."]


async def test_voice_lists_ask_a_provider_registered_twice_once() -> None:
    light, cloud = FakeTTS("light"), FakeTTS("cloud")
    spk = Speaker({"embedded": light, "light": light, "cloud": cloud}, "embedded")
    lists = await spk.voice_lists()
    assert {name: v.voices for name, v in lists.items()} == {
        "embedded": ("light",),
        "light": ("light",),
        "cloud": ("cloud",),
    }
    assert (light.listed, cloud.listed, spk.default) == (1, 1, "embedded")


def test_default_provider_must_be_registered() -> None:
    with pytest.raises(ValueError, match="not registered"):
        Speaker({"a": FakeTTS("a")}, "b")


async def test_markdown_and_emoji_are_neither_spoken_nor_shown() -> None:
    fake = FakeTTS()
    out = await collect(
        speaker(fake).sentences(
            "**Hello** 👋 there.\n\n", Voice(), FrameEncoder(AudioFormat(sample_rate=24000))
        )
    )
    assert [s for s, _ in out] == ["Hello there."]
    assert fake.calls == ["Hello there."]


@pytest.mark.parametrize("text", ["", "  \n", "😀 …"])
async def test_nothing_to_say_yields_nothing(text: str) -> None:
    fake = FakeTTS()
    assert (
        await collect(
            speaker(fake).sentences(text, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
        == []
    )
    assert fake.calls == []


async def test_provider_error_ends_the_iteration_after_the_good_sentences() -> None:
    fake = FakeTTS(fail=SENTENCES[1])
    got: list[str] = []

    async def consume() -> None:
        async for sentence, _ in speaker(fake).sentences(
            TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000))
        ):
            got.append(sentence)

    with pytest.raises(TTSError, match="provider down"):
        await consume()
    assert got == SENTENCES[:1]
    assert not other_tasks()


async def test_stopping_early_cancels_the_prefetch() -> None:
    fake = FakeTTS(hang=SENTENCES[1])
    it = speaker(fake).sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    async with asyncio.timeout(2), aclosing(it):
        async for sentence, _ in it:
            assert sentence == SENTENCES[0]
            await asyncio.sleep(0.01)  # sending sentence one while sentence two is synthesised
            break
    assert fake.calls == SENTENCES[:2]
    assert fake.cancelled == [SENTENCES[1]]
    assert not other_tasks()


async def test_dropping_the_iterator_without_aclosing_still_cancels() -> None:
    fake = FakeTTS(hang=SENTENCES[1])
    it = speaker(fake).sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    async for _ in it:
        await asyncio.sleep(0.01)
        break
    del it  # asyncio's async-generator finaliser schedules a task running aclose()
    await asyncio.sleep(0)
    closing = other_tasks()
    assert closing
    await asyncio.wait(closing, timeout=1)
    assert not other_tasks()
    assert fake.cancelled == [SENTENCES[1]]


async def test_cancelling_the_consumer_cancels_synthesis() -> None:
    fake = FakeTTS(hang=SENTENCES[0])
    consumer = asyncio.create_task(
        collect(
            speaker(fake).sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
    )
    async with asyncio.timeout(1):
        await fake.called.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(consumer, 2)
    assert fake.cancelled == [SENTENCES[0]]
    assert not other_tasks()


class RecordingEncoder(FrameEncoder):
    """Notes the thread each encode ran on, and can be slow."""

    def __init__(self, delay: float = 0.0, on_start: Callable[[], object] | None = None) -> None:
        super().__init__(AudioFormat(sample_rate=24000))
        self.delay = delay
        self.on_start = on_start
        self.threads: list[str] = []
        self.finished = threading.Event()

    def encode_frames(self, frames: list[bytes]) -> list[bytes]:
        """Encode, after recording the thread and sleeping the delay."""
        self.threads.append(threading.current_thread().name)
        if self.on_start is not None:
            self.on_start()
        time.sleep(self.delay)
        encoded = super().encode_frames(frames)
        self.finished.set()
        return encoded


async def test_encoding_runs_in_the_given_executor() -> None:
    encoder = RecordingEncoder()
    with ThreadPoolExecutor(1, thread_name_prefix="opus") as pool:
        await collect(speaker(FakeTTS(), executor=pool).sentences(TEXT, Voice(), encoder))
    assert len(encoder.threads) == len(SENTENCES)  # each under 2 x HEAD_FRAMES: one encode
    assert all(name.startswith("opus") for name in encoder.threads)


async def test_cancellation_waits_for_a_running_encode() -> None:
    # The encoder is not thread-safe: after cancellation no thread may still be inside it.
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    encoder = RecordingEncoder(delay=0.2, on_start=lambda: loop.call_soon_threadsafe(started.set))
    consumer = asyncio.create_task(collect(speaker(FakeTTS()).sentences("Hi.", Voice(), encoder)))
    async with asyncio.timeout(1):
        await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(consumer, 2)
    assert encoder.finished.is_set()


async def test_embedded_speech_end_to_end() -> None:
    spk = Speaker({"embedded": EmbeddedTTS()}, "embedded")
    out = await collect(
        spk.sentences(
            "Hello there. 你好，世界。", Voice(), FrameEncoder(AudioFormat(sample_rate=24000))
        )
    )
    assert [s for s, _ in out] == ["Hello there.", "你好，世界。"]
    decoder = OpusDecoder(24000)
    for _, frames in out:
        assert len(frames) > 5
        assert rms(b"".join(decoder.decode(f) for f in frames)) > 300


async def test_embedded_speech_stopped_early_leaves_no_process() -> None:
    # Children from before (multiprocessing's resource tracker, once any test has started an
    # ASR worker) are not this test's business.
    before = child_processes()
    spk = Speaker({"embedded": EmbeddedTTS()}, "embedded")
    text = "One sentence here. " * 5
    async with aclosing(
        spk.sentences(text, Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    ) as it:
        async for _ in it:
            break
    assert not other_tasks()
    assert child_processes() <= before


async def test_each_synthesis_reports_its_provider_and_latency() -> None:
    timings: list[tuple[str, float]] = []
    fake = FakeTTS("fake", delays={SENTENCES[0]: 0.05, SENTENCES[1]: 0.02}, fail=SENTENCES[2])
    spk = speaker(fake, on_synth=lambda name, s: timings.append((name, s)))
    with pytest.raises(TTSError):
        await collect(spk.sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000))))
    assert [name for name, _ in timings] == ["fake", "fake"]  # not for the failed sentence
    # uvloop fires timers against its cached clock, up to a millisecond early: leave slack.
    assert 0.045 <= timings[0][1] < 1
    assert 0.015 <= timings[1][1] < 1


LONG_FIRST = "This first sentence is long enough to be split. Two."


async def test_the_first_frames_go_out_before_the_first_sentence_is_encoded() -> None:
    encoder = RecordingEncoder(delay=0.05)
    spk = speaker(FakeTTS(), first_max_chars=None)
    async with aclosing(spk.segments(LONG_FIRST, Voice(), encoder)) as it:
        sentence, head, whole = await anext(it)
        assert (sentence, len(head), whole) == (
            "This first sentence is long enough to be split.",
            HEAD_FRAMES,
            False,
        )
        assert len(encoder.threads) == 1  # only the head is encoded so far
        # The rest comes in pieces, each as soon as it is encoded: 8 frames, then 16, ...
        pieces: list[list[bytes]] = []
        whole = False
        while not whole:
            sentence, piece, whole = await anext(it)
            assert sentence is None
            pieces.append(piece)
        assert [len(p) for p in pieces] == [FIRST_PIECE_FRAMES, 4, 0]
        rest = [frame for piece in pieces for frame in piece]
        assert len(head + rest) == expected_frames(
            "This first sentence is long enough to be split."
        )
        assert (await anext(it))[::2] == ("Two.", True)
    # The same encoder state runs through head and rest: the frames are those of one encode.
    pcm = tone(len("This first sentence is long enough to be split.") * SECONDS_PER_CHAR)
    assert head + rest == FrameEncoder(AudioFormat(sample_rate=24000)).encode(pcm)


async def test_the_next_sentence_is_made_while_the_caller_still_sends_the_first() -> None:
    # The caller (the pacer) may hold a piece of the first sentence for as long as it takes to
    # play; the second sentence is synthesised meanwhile, once the first is all encoded.
    fake = FakeTTS()
    spk = speaker(fake, first_max_chars=None)
    encoder = RecordingEncoder(delay=0.01)
    async with aclosing(spk.segments(LONG_FIRST, Voice(), encoder)) as it:
        await anext(it)  # the head
        _, piece, whole = await anext(it)  # the first piece of the rest, held
        assert (len(piece), whole) == (FIRST_PIECE_FRAMES, False)
        async with asyncio.timeout(5):
            while "Two." not in fake.calls:
                await asyncio.sleep(0.005)
        while not whole:  # the rest of the first sentence
            _, _, whole = await anext(it)
        assert (await anext(it))[::2] == ("Two.", True)
    assert fake.calls == ["This first sentence is long enough to be split.", "Two."]
    assert not other_tasks()


async def test_a_stop_while_the_rest_is_encoded_leaves_no_task() -> None:
    encoder = RecordingEncoder(delay=0.05)
    spk = speaker(FakeTTS(), first_max_chars=None)
    async with aclosing(spk.segments(LONG_FIRST, Voice(), encoder)) as it:
        await anext(it)  # the head; the rest is being encoded
    assert not other_tasks()


async def test_answers_wanting_the_same_sentence_at_once_share_one_synthesis() -> None:
    fake = FakeTTS(delays={s: 0.05 for s in SENTENCES})
    spk = speaker(fake, cache=FrameCache(1_000_000))
    outs = await asyncio.gather(
        *(
            collect(spk.sentences(TEXT, Voice(), FrameEncoder(AudioFormat(sample_rate=24000))))
            for _ in range(5)
        )
    )
    assert sorted(fake.calls) == sorted(SENTENCES)
    assert all(out == outs[0] for out in outs)
    assert [s for s, _ in outs[0]] == SENTENCES
    assert not other_tasks()


async def test_a_shared_sentence_is_made_again_when_its_first_answer_stops() -> None:
    fake = FakeTTS(delays={"Hello there.": 0.2})
    spk = speaker(fake, cache=FrameCache(1_000_000))
    first = asyncio.create_task(
        collect(
            spk.sentences("Hello there.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
    )
    await fake.called.wait()
    second = asyncio.create_task(
        collect(
            spk.sentences("Hello there.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
    )
    await asyncio.sleep(0.05)
    assert fake.calls == ["Hello there."]  # the second waits for the first
    first.cancel()
    out = await asyncio.wait_for(second, 2)
    assert [s for s, _ in out] == ["Hello there."]
    assert len(out[0][1]) == expected_frames("Hello there.")
    assert fake.calls == ["Hello there.", "Hello there."]
    assert first.cancelled()


async def test_a_failed_shared_sentence_fails_every_answer_waiting_for_it() -> None:
    fake = FakeTTS(fail="Hello there.", delays={"Hello there.": 0.05})
    spk = speaker(fake, cache=FrameCache(1_000_000))
    results = await asyncio.gather(
        *(
            collect(
                spk.sentences("Hello there.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
            )
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, TTSError) for r in results)
    assert fake.calls == ["Hello there."]
    # Nothing failed is kept: the next answer asks the provider again.
    fake.fail = None
    out = await collect(
        spk.sentences("Hello there.", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
    )
    assert len(out[0][1]) == expected_frames("Hello there.")
