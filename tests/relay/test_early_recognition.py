"""Early recognition (`[vad] early_silence_s`): Whisper base starts on the audio so far at the
first pause the VAD reports; the text is kept when the utterance ends there and discarded
when speech resumes. Real espeak-ng speech, the real Silero VAD and one real Whisper worker
(loaded once for the module), through the Listener.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio

from asr_tts.asr.base import EarlyStream
from asr_tts.asr.whisper import WhisperASR
from asr_tts.segmenter import SegmenterConfig
from asr_tts.vad import SileroModel
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from relay.device.audio_batcher import AudioBatcher
from relay.device.listener import Listener, VoiceDeps
from tests.relay.voice_helpers import SpeechBank, opus_packets, silence

pytestmark = pytest.mark.asyncio(loop_scope="module")
EARLY = SegmenterConfig(min_silence_s=1.0, early_silence_s=0.2)
PACKET_S = 0.06


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def whisper() -> AsyncIterator[WhisperASR]:
    asr = WhisperASR(pool_size=1, language="en")
    stream = await asr.open()  # the model loads here, not inside a measured utterance
    await stream.cancel()
    yield asr
    asr.close()
    await asr.wait_closed()


@pytest.fixture(scope="module")
def speech() -> SpeechBank:
    return SpeechBank()


@dataclass
class Heard:
    text: str
    wait_s: float  # from the VAD's end of the utterance to its text
    metrics: Metrics

    def early(self, outcome: str) -> float:
        sample = "relay_asr_early_total"
        return self.metrics.registry.get_sample_value(sample, {"outcome": outcome}) or 0.0


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


async def hear(asr: WhisperASR, segmenter: SegmenterConfig, speech: bytes) -> Heard:
    """`speech` then silence into an auto-mode Listener: the speech as fast as it is taken,
    the silence in real time (the time a decode begun at the pause has to run), once the VAD
    has caught up with the speech (else, on a busy machine, it could see the pause and the
    end in one batch, with no time between them)."""
    metrics = Metrics()
    got: asyncio.Future[Heard] = asyncio.get_running_loop().create_future()

    def on_text(text: str, t_end: float) -> None:
        if not got.done():
            got.set_result(Heard(text, time.monotonic() - t_end, metrics))

    with ThreadPoolExecutor(1) as pool:
        deps = VoiceDeps(
            asr=asr,
            vad=SileroModel(),
            segmenter=segmenter,
            batcher=AudioBatcher(pool, max_in_flight=1),
            metrics=metrics,
        )
        listener = Listener(
            deps, AudioFormat(), on_speech=lambda: None, on_text=on_text, device_id="d"
        )
        listener.start("auto")
        for packet in opus_packets(silence(0.3) + speech):
            assert listener.feed(packet)
        async with asyncio.timeout(30):
            while listener._pump is not None:
                await asyncio.sleep(0.01)
            for packet in opus_packets(silence(segmenter.min_silence_s + 1.0)):
                if got.done():
                    break
                listener.feed(packet)
                await asyncio.sleep(PACKET_S)
            heard = await got
        await listener.close()
    return heard


async def test_a_pause_that_ends_the_utterance_gives_the_same_text_sooner(
    whisper: WhisperASR, speech: SpeechBank
) -> None:
    said = speech.say("turn on the light")
    off = await hear(whisper, replace(EARLY, early_silence_s=0.0), said)
    on = await hear(whisper, EARLY, said)
    assert words(on.text) == words(off.text) == ["turn", "on", "the", "light"]
    assert (on.early("hit"), on.early("miss")) == (1, 0)
    assert (off.early("hit"), off.early("miss")) == (0, 0)
    # Decoding began 0.8 s before the VAD's end: the text waits for less of it, or not at all.
    assert on.wait_s < off.wait_s, (on.wait_s, off.wait_s)


async def test_speech_resumed_after_the_pause_is_recognised_whole(
    whisper: WhisperASR, speech: SpeechBank
) -> None:
    said = speech.say("what time is it") + silence(0.4) + speech.say("turn on the light")
    heard = await hear(whisper, EARLY, said)
    assert words(heard.text)[-2:] == ["the", "light"], heard.text  # not the early fragment
    assert "time" in words(heard.text)
    assert heard.early("miss") == 1


async def test_one_early_decode_at_a_time_on_the_utterances_own_worker(
    whisper: WhisperASR, speech: SpeechBank
) -> None:
    # A second pause while the first early decode still runs starts nothing: an utterance
    # never queues two calls on its worker, nor takes a second one (the pool has one).
    stream = await whisper.open()
    assert isinstance(stream, EarlyStream)
    await stream.feed(speech.say("what time is it"))
    assert stream.start_early()
    assert not stream.start_early()
    stream.discard_early()
    await stream.feed(silence(0.3) + speech.say("turn on the light"))
    assert words(await stream.finish())[-2:] == ["the", "light"]
