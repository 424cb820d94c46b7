"""The embedded pocketsphinx provider: real speech from espeak-ng, the decoder pool's bound,
and what happens to a decoder after a cancelled or finished utterance."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from asr_tts.asr import ASRError, ASRStream
from asr_tts.asr_embedded import EmbeddedASR, command_grammar
from asr_tts.audio import pcm_from_wav, resample

CHUNK = 1920  # 60 ms of 16 kHz s16le
COMMANDS = ["turn on the light", "turn off the light", "what time is it", "dance", "stop"]
Speak = Callable[..., bytes]


@pytest.fixture(scope="module")
def speak() -> Speak:
    """espeak-ng speech as 16 kHz s16le, cached per module."""
    cache: dict[tuple[str, str], bytes] = {}

    def say(text: str, voice: str = "en") -> bytes:
        if (text, voice) not in cache:
            wav = subprocess.run(
                ["espeak-ng", "--stdout", "-s", "140", "-v", voice, text],
                capture_output=True,
                check=True,
            ).stdout
            cache[text, voice] = resample(pcm_from_wav(wav), 16000).samples
        return cache[text, voice]

    return say


@pytest.fixture
async def commands() -> AsyncIterator[EmbeddedASR]:
    asr = EmbeddedASR(grammar_words=COMMANDS)
    yield asr
    asr.close()


async def feed_all(stream: ASRStream, pcm: bytes) -> None:
    """Feed `pcm` in 60 ms frames, as the relay does."""
    for i in range(0, len(pcm), CHUNK):
        await stream.feed(pcm[i : i + CHUNK])


async def recognise(asr: EmbeddedASR, pcm: bytes) -> str:
    """One whole utterance."""
    stream = await asr.open()
    await feed_all(stream, pcm)
    return await stream.finish()


# British English (espeak-ng's default "en") says /dɑːns/, which CMUdict's D AE N S does
# not match; the US English model is what pocketsphinx ships, so "dance" is spoken en-us.
@pytest.mark.parametrize(
    ("text", "voice"),
    [("turn on the light", "en"), ("what time is it", "en"), ("dance", "en-us")],
)
async def test_commands_are_recognised(
    commands: EmbeddedASR, speak: Speak, text: str, voice: str
) -> None:
    assert await recognise(commands, speak(text, voice)) == text


async def test_commands_in_a_row(commands: EmbeddedASR, speak: Speak) -> None:
    text = await recognise(commands, speak("turn off the light. stop", "en-us"))
    assert text == "turn off the light stop"


async def test_full_vocabulary_gets_plain_words(speak: Speak) -> None:
    # Full-vocabulary recognition of espeak-ng's voice is poor ("turn on the light" comes
    # out as "do not ah like"); two clear words survive.
    asr = EmbeddedASR(pool_size=1)
    try:
        assert "please stop" in await recognise(asr, speak("please stop", "en-us"))
    finally:
        asr.close()


async def test_a_decoder_outlives_timeouts_and_returns_to_the_pool(speak: Speak) -> None:
    asr = EmbeddedASR(pool_size=1, timeout_s=0.01)  # full vocabulary: loading takes 0.3 s
    try:
        with pytest.raises(ASRError, match="no free decoder"):
            await asr.open()  # the load goes on and its decoder joins the pool
        asr.timeout_s = 5
        stream = await asr.open()
        await feed_all(stream, speak("turn on the light and tell me what time it is", "en-us"))
        asr.timeout_s = 0.01
        with pytest.raises(ASRError, match="decoding took longer than 0.01 s"):
            await stream.finish()
        asr.timeout_s = 5
        # The only decoder comes back once the interrupted decode ends, ready for more.
        abandoned = await asr.open()
        await feed_all(abandoned, speak("what time is it", "en-us"))
        await abandoned.cancel()
        assert "please stop" in await recognise(asr, speak("please stop", "en-us"))
    finally:
        asr.close()


async def test_silence_is_empty(commands: EmbeddedASR) -> None:
    assert await recognise(commands, bytes(32000)) == ""
    assert await recognise(commands, b"") == ""


async def test_pool_bound_makes_open_wait_and_time_out(speak: Speak) -> None:
    asr = EmbeddedASR(pool_size=1, timeout_s=0.3, grammar_words=COMMANDS)
    try:
        first = await asr.open()
        with pytest.raises(ASRError, match=r"no free decoder within 0\.3 s"):
            await asr.open()
        waiting = asyncio.create_task(asr.open())
        await feed_all(first, speak("dance", "en-us"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        assert await first.finish() == "dance"
        second = await asyncio.wait_for(waiting, 1)
        # The same decoder, and nothing of the previous utterance left in it.
        await feed_all(second, speak("turn on the light"))
        assert await second.finish() == "turn on the light"
    finally:
        asr.close()


async def test_cancel_returns_a_clean_decoder(commands: EmbeddedASR, speak: Speak) -> None:
    stream = await commands.open()
    await feed_all(stream, speak("what time is it"))
    await stream.cancel()
    await stream.cancel()  # idempotent
    await stream.feed(speak("dance", "en-us"))  # ignored
    with pytest.raises(ASRError, match="already finished or cancelled"):
        await stream.finish()
    asr = EmbeddedASR(pool_size=1, timeout_s=1, grammar_words=COMMANDS)
    try:
        cancelled = await asr.open()
        await feed_all(cancelled, speak("what time is it"))
        await cancelled.cancel()
        assert await recognise(asr, speak("turn off the light", "en-us")) == "turn off the light"
    finally:
        asr.close()


async def test_two_utterances_decode_side_by_side(commands: EmbeddedASR, speak: Speak) -> None:
    a, b = await commands.open(), await commands.open()
    left, right = speak("turn on the light"), speak("dance", "en-us")
    for i in range(0, max(len(left), len(right)), CHUNK):
        await a.feed(left[i : i + CHUNK])
        await b.feed(right[i : i + CHUNK])
    assert list(await asyncio.gather(a.finish(), b.finish())) == ["turn on the light", "dance"]
    await a.cancel()  # safe after finish


async def test_words_missing_from_the_dictionary_fail_at_open() -> None:
    asr = EmbeddedASR(grammar_words=["turn on the zorblax"])
    try:
        with pytest.raises(ASRError, match=r"missing from the pronunciation dictionary.*zorblax"):
            await asr.open()
    finally:
        asr.close()


async def test_a_closed_pool_refuses_work(commands: EmbeddedASR, speak: Speak) -> None:
    stream = await commands.open()
    await feed_all(stream, speak("dance", "en-us"))
    commands.close()
    with pytest.raises(ASRError, match="pool is closed"):
        await stream.finish()
    fresh = EmbeddedASR(pool_size=1, timeout_s=1)
    fresh.close()
    with pytest.raises(ASRError, match="pool is closed"):
        await fresh.open()


async def test_an_utterance_too_long_is_refused(commands: EmbeddedASR) -> None:
    stream = await commands.open()
    second = bytes(32000)
    for _ in range(120):
        await stream.feed(second)
    with pytest.raises(ASRError, match="longer than 120 s"):
        await stream.feed(second)
    await stream.cancel()


def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        EmbeddedASR(pool_size=0)


@pytest.mark.parametrize("phrases", [[], ["turn on", ""], ["on/off"], ["ein würfel"]])
def test_unusable_grammar_entries_are_refused(phrases: list[str]) -> None:
    with pytest.raises(ValueError, match="grammar"):
        command_grammar(phrases)


def test_grammar_is_a_loop_of_whole_phrases() -> None:
    assert command_grammar(["Dance", "turn  on the LIGHT", "dance"]) == (
        "#JSGF V1.0;\ngrammar commands;\npublic <utterance> = ( dance | turn on the light )+ ;\n"
    )
