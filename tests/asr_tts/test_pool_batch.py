"""A batch decoder pool (asr_tts.asr.pool, the way Whisper runs): an utterance takes its
decoder when it first decodes, not when it opens, so a device still talking holds no decoder
from one that has finished. The decoder here is tests/asr_tts/batch_backend.py, in the pool's
real worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from asr_tts.asr.base import ASRError, EarlyStream
from asr_tts.asr.pool import Backend, DecoderPool
from tests.asr_tts import batch_backend

BACKEND = Backend(label="batch", load=batch_backend.load, load_args=(), finish=batch_backend.finish)
AUDIO = b"\x01\x00" * 800  # 0.05 s at 16 kHz


@pytest.fixture
async def pool() -> AsyncIterator[DecoderPool]:
    """One decoder, started before the test (its start is not what is timed)."""
    p = DecoderPool(BACKEND, pool_size=1, timeout_s=0.5)
    p.warm()
    async with asyncio.timeout(30):
        while not p._idle:  # noqa: SLF001 - the warm-up's worker, loaded
            await asyncio.sleep(0.01)
    yield p
    p.close()
    await p.wait_closed()


async def test_a_talking_utterance_holds_no_decoder(pool: DecoderPool) -> None:
    talking = await pool.open()
    await talking.feed(AUDIO)
    # Before, open() took the only decoder: this one waited 0.5 s and failed.
    done = await pool.open()
    await done.feed(AUDIO + AUDIO)
    assert await done.finish() == f"{2 * len(AUDIO)} bytes"
    await talking.feed(AUDIO)
    assert await talking.finish() == f"{2 * len(AUDIO)} bytes"


async def test_finish_waits_for_a_decoder_up_to_timeout_s(pool: DecoderPool) -> None:
    waiting = await pool.open()
    await waiting.feed(AUDIO)
    held = await pool.take()  # the only decoder, busy elsewhere
    with pytest.raises(ASRError, match=r"no free decoder within 0\.5 s") as info:
        await waiting.finish()
    assert info.value.reason == "worker"
    pool.give_back(held)
    again = await pool.open()  # the waiting one left no permit behind
    await again.feed(AUDIO)
    assert await again.finish() == f"{len(AUDIO)} bytes"


async def test_an_early_decode_takes_a_free_decoder_and_finish_keeps_it(pool: DecoderPool) -> None:
    stream = await pool.open()
    assert isinstance(stream, EarlyStream)
    await stream.feed(AUDIO)
    assert stream.start_early()
    await stream.feed(AUDIO)  # after the pause: no speech (kept), the text is the early one
    assert await stream.finish() == f"{len(AUDIO)} bytes"


async def test_no_early_decode_while_every_decoder_is_busy(pool: DecoderPool) -> None:
    other = await pool.open()
    await other.feed(AUDIO)
    held = await pool.take()
    assert isinstance(other, EarlyStream)
    assert not other.start_early()  # it would wait in line: finish() will take one
    pool.give_back(held)
    await other.feed(AUDIO)
    assert await other.finish() == f"{2 * len(AUDIO)} bytes"


async def test_cancel_while_waiting_for_a_decoder_gives_nothing_away(pool: DecoderPool) -> None:
    waiting = await pool.open()
    await waiting.feed(AUDIO)
    held = await pool.take()
    finishing = asyncio.create_task(waiting.finish())
    await asyncio.sleep(0.05)
    finishing.cancel()
    await asyncio.gather(finishing, return_exceptions=True)
    await waiting.cancel()
    pool.give_back(held)
    # One decoder, free again: a new utterance gets it at once, twice in a row.
    for _ in range(2):
        stream = await pool.open()
        await stream.feed(AUDIO)
        assert await stream.finish() == f"{len(AUDIO)} bytes"


async def test_an_early_decode_waiting_for_its_decoder_is_dropped_when_speech_goes_on(
    pool: DecoderPool,
) -> None:
    stream = await pool.open()
    assert isinstance(stream, EarlyStream)
    await stream.feed(AUDIO)
    assert stream.start_early()  # a decoder was free: the early decode goes to take it
    held = await pool.take()  # ... but another utterance got there first
    stream.discard_early()  # speech went on: the early audio is not the utterance's
    await stream.feed(AUDIO)
    pool.give_back(held)
    assert await stream.finish() == f"{2 * len(AUDIO)} bytes"
