"""An overloaded relay bounds every device's lag: auto and realtime audio that waited past
`max_late_s` for decode + VAD is dropped and counted; push-to-talk audio is all kept."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from asr_tts.asr.base import ASRStream
from asr_tts.codec import FrameEncoder
from asr_tts.pcm import Pcm
from asr_tts.segmenter import SegmenterConfig
from asr_tts.vad import SileroModel
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat
from protocol.device import ListenMode
from relay.device.audio_batcher import AudioBatcher
from relay.device.listener import Listener, VoiceDeps
from tests.relay.voice_helpers import SpeechBank, opus_packets, silence

PACKET = FrameEncoder(AudioFormat("opus", 16000, 1, 60)).encode(Pcm(bytes(1920), 16000))[0]


class _Utterance:
    def __init__(self) -> None:
        self.fed = 0

    async def feed(self, pcm: bytes) -> None:
        self.fed += len(pcm)

    async def finish(self) -> str:
        return ""

    async def cancel(self) -> None:
        return None


class SilentASR:
    """A provider that hears nothing (this is about the audio before ASR)."""

    name = "silent"

    def __init__(self, open_s: float = 0.0) -> None:
        self.open_s = open_s  # a provider starting a decoder, or connecting, takes its time
        self.utterances: list[_Utterance] = []

    async def open(self, *, language: str | None = None) -> ASRStream:
        await asyncio.sleep(self.open_s)
        self.utterances.append(_Utterance())
        return self.utterances[-1]


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


@pytest.fixture(scope="module")
def speech() -> SpeechBank:
    return SpeechBank()


async def feed_while_busy(model: SileroModel, mode: ListenMode) -> tuple[float, int]:
    """Feed 12 packets in real time while the audio thread is stuck for 0.6 s; return the
    late drops counted and the packets accepted."""
    metrics = Metrics()
    with ThreadPoolExecutor(1) as pool:
        batcher = AudioBatcher(pool, max_in_flight=1)
        deps = VoiceDeps(
            asr=SilentASR(),
            vad=model,
            segmenter=SegmenterConfig(),
            batcher=batcher,
            metrics=metrics,
            max_late_s=0.2,
        )
        listener = Listener(
            deps, AudioFormat(), on_speech=lambda: None, on_text=lambda *_: None, device_id="d"
        )
        listener.start(mode)
        stuck = pool.submit(time.sleep, 0.6)  # another job hogs the only audio thread
        accepted = 0
        for _ in range(12):
            accepted += listener.feed(PACKET)
            await asyncio.sleep(0.06)
        await asyncio.wrap_future(stuck)
        for _ in range(100):  # the listener catches up
            if listener._pump is None:
                break
            await asyncio.sleep(0.02)
        await listener.close()
    late = metrics.registry.get_sample_value("relay_audio_dropped_total", {"reason": "late"})
    return late or 0.0, accepted


async def test_realtime_audio_that_waited_too_long_is_dropped_and_counted(
    model: SileroModel,
) -> None:
    late, accepted = await feed_while_busy(model, "realtime")
    assert accepted == 12
    # The first packet's job waited for the thread; of the rest, those that arrived more than
    # 0.2 s before it was free (about 0.1-0.4 s after the start) were dropped.
    assert 2 <= late <= 8, late


async def test_push_to_talk_audio_is_never_dropped_as_late(model: SileroModel) -> None:
    late, accepted = await feed_while_busy(model, "manual")
    assert accepted == 12
    assert late == 0


async def test_an_utterance_keeps_its_audio_while_the_asr_is_slow_to_open(
    model: SileroModel, speech: SpeechBank
) -> None:
    # The listener waits for the provider's stream before it goes on with the audio: that
    # wait is not overload, and the words said meanwhile must reach the ASR.
    metrics = Metrics()
    asr = SilentASR(open_s=0.8)
    texts: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        deps = VoiceDeps(
            asr=asr,
            vad=model,
            segmenter=SegmenterConfig(),
            batcher=AudioBatcher(pool, max_in_flight=1),
            metrics=metrics,
            max_late_s=0.2,
        )
        listener = Listener(
            deps,
            AudioFormat(),
            on_speech=lambda: None,
            on_text=lambda text, _t: texts.append(text),
            device_id="d",
        )
        listener.start("auto")
        words = speech.say("turn off the light")
        for packet in opus_packets(silence(0.3) + words + silence(1.2)):
            listener.feed(packet)  # refused once the utterance ended: auto mode turns off
            await asyncio.sleep(0.06)
        async with asyncio.timeout(5):
            while not texts:
                await asyncio.sleep(0.02)
        await listener.close()
    late = metrics.registry.get_sample_value("relay_audio_dropped_total", {"reason": "late"})
    assert not late
    (utterance,) = asr.utterances
    assert utterance.fed >= len(words)  # all the words, with pre-roll and the trailing silence
