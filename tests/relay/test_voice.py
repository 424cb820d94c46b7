"""Voice end to end over a real WebSocket (docs/protocol.md §1.2–§1.6): espeak-ng speech, encoded as
a device does, streamed to the relay, recognised by the embedded command recogniser, answered
by the fake business and spoken back as paced Opus (or PCM) frames.

Speech is sent faster than real time where only the result matters: the VAD and the
segmenter count audio, not wall-clock time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal

import numpy as np
import opuslib_next
import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.device.connection import DEVICE_ROOM
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness
from tests.relay.test_cluster import eventually
from tests.relay.voice_helpers import (
    COMMANDS,
    FRAME_BYTES,
    FakeTranscriber,
    SpeechBank,
    StallingBusiness,
    VoiceDevice,
    chat_msgs,
    is_stt,
    is_tts,
    long_first_answer,
    metric,
    opus_packets,
    pcm_frames,
    rms,
    silence,
    texts_of,
    wait_metric,
)

GRAMMAR = {"provider": "pocketsphinx", "grammar_words": list(COMMANDS)}
DEVICE_ID = "669C4BDA13EA"  # the canonical form of Device.connect's default MAC (§1.1)


@pytest.fixture(scope="session")
def speech() -> SpeechBank:
    """espeak-ng phrases, synthesised once for the whole run."""
    return SpeechBank()


async def voice_relay(make_relay: RelayFactory, **overrides: Any) -> TestClient[Any, Any]:
    """A relay with the embedded recogniser restricted to the test commands."""
    return await make_relay(asr=GRAMMAR, **overrides)


async def push_to_talk(
    dev: VoiceDevice,
    pcm: bytes,
    *,
    speed: float = 4.0,
    fmt: Literal["opus", "pcm"] = "opus",
) -> None:
    """Manual mode (§1.3): listen start, the utterance, listen stop."""
    await dev.listen("manual")
    await dev.send_audio(opus_packets(pcm) if fmt == "opus" else pcm_frames(pcm), speed)
    await dev.stop_listening()  # right after the last packet, as the firmware does


def stt_texts(events: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in events if is_stt(m)]


# ---- the three listen modes ------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_manual_utterance_is_recognised_and_answered(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank, version: int
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client, version=version)
    await push_to_talk(dev, speech.say("turn on the light"))
    stt = await dev.next_text()
    assert stt == {"session_id": dev.session_id, "type": "stt", "text": "turn on the light"}
    answer = await dev.answer()
    answer.check_spoken()
    assert answer.captions == "Echo turn on the light."
    (body,) = [orjson.loads(b) for b in fake.bodies]
    assert body["type"] == "chat"
    assert body["auth"] == {"device_id": DEVICE_ID}
    assert body["details"]["msg"] == "turn on the light"
    assert body["details"]["session_id"] == dev.session_id


async def test_listen_stop_right_after_a_burst_keeps_the_whole_utterance(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    # A Wi-Fi stall, then the catch-up: every packet arrives just before `listen stop`,
    # while the relay is still decoding them.
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    await dev.send_audio(opus_packets(speech.say("turn on the light")), speed=1000)
    await dev.stop_listening()
    assert stt_texts(await dev.until(is_stt, timeout=3)) == ["turn on the light"]
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["turn on the light"]


async def test_auto_mode_ends_the_utterance_after_trailing_silence(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    # espeak-ng ends its clip with ~0.37 s of silence: less than vad.min_silence_s (0.6 s).
    await dev.send_audio(opus_packets(silence(0.3) + speech.say("what time is it")), speed=4)
    assert await dev.quiet(0.5) == []
    await dev.send_audio(opus_packets(silence(1.0)), speed=4)
    assert await dev.next_text() == {
        "session_id": dev.session_id,
        "type": "stt",
        "text": "what time is it",
    }
    answer = await dev.answer()
    answer.check_spoken()
    assert answer.captions == "Echo what time is it."
    assert chat_msgs(fake.bodies) == ["what time is it"]
    # The mode stays in force (§1.3): the next utterance needs no new `listen start`.
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=4)
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["what time is it", "dance"]
    assert await metric(client, 'relay_audio_dropped_total{reason="not_listening"}') == 0


async def test_auto_mode_does_not_hear_its_own_answer(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    # A client whose microphone stays open while it plays the answer (the browser client)
    # sends the answer back as uplink audio: in auto mode that echo is not the user (§1.3).
    # 3.8 s of answer: the echo below (1.5 s of audio sent at 4x) ends within its first second.
    fake.script = long_first_answer("This is a long answer that goes on. " * 2)
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    await dev.send_audio(opus_packets(speech.say("what time is it") + silence(1.0)), speed=4)
    await dev.until(is_tts("start"))
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=4)
    answer = await dev.answer()
    assert not answer.aborted
    assert "Echo" not in answer.captions
    assert await metric(client, 'relay_audio_dropped_total{reason="speaking"}') >= 20
    assert await dev.quiet(0.5) == []
    assert chat_msgs(fake.bodies) == ["what time is it"]
    # Once the answer has played, the user is heard again without a new `listen start`.
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=4)
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}


async def test_realtime_speech_interrupts_a_long_answer(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    fake.script = long_first_answer("This is a long answer that goes on. " * 8)
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("realtime")
    utterance = silence(0.3) + speech.say("what time is it") + silence(1.0)
    await dev.send_audio(opus_packets(utterance), speed=4)
    first = await dev.until(is_tts("sentence_start"))
    assert stt_texts(first) == ["what time is it"]
    assert first[-1]["text"] == "This is a long answer that goes on."
    await asyncio.sleep(0.3)  # the device is playing the answer; the user speaks over it
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=2)
    cut = await dev.until(is_tts("stop"))
    assert cut[-1]["is_aborted"] is True
    assert stt_texts(cut) == []  # the answer is cut at speech start, before the new text
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    answer = await dev.answer()
    answer.check_spoken()
    assert answer.captions == "Echo dance."
    assert chat_msgs(fake.bodies) == ["what time is it", "dance"]
    assert await metric(client, "relay_barge_ins_total") == 1


async def test_pcm_uplink_is_recognised_and_answered_in_pcm(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect_pcm(client)
    assert dev.dev.hello["audio_params"]["format"] == "pcm"
    assert dev.dev.hello["audio_params"]["sample_rate"] == 16000
    await push_to_talk(dev, speech.say("dance"), fmt="pcm")
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    answer = await dev.answer()
    answer.check_spoken("pcm")
    assert answer.captions == "Echo dance."
    assert chat_msgs(fake.bodies) == ["dance"]


def cut_in_speech(pcm: bytes) -> bytes:
    """`pcm` cut to whole uplink frames, the last of them inside the last word, and not to a
    whole number of the relay's 32 ms VAD windows (8 frames are 15 of them)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    frames = (int(np.flatnonzero(np.abs(x) > 1000)[-1]) + 1) // (FRAME_BYTES // 2)
    if frames % 8 == 0:
        frames -= 1
    return pcm[: frames * FRAME_BYTES]


async def test_push_to_talk_hands_the_recogniser_the_whole_utterance_and_nothing_else(
    make_relay: RelayFactory, speech: SpeechBank, aiohttp_server: Any
) -> None:
    # The relay cuts what it decodes into 32 ms windows for the VAD. At `listen stop` the
    # audio short of a whole window is the end of the utterance, here the end of its last
    # word: it goes to the recogniser, and is no part of the next utterance.
    transcriber = FakeTranscriber()
    server = await aiohttp_server(transcriber.app())
    client = await make_relay(
        asr={"provider": "openai", "openai": {"base_url": str(server.make_url("/"))}}
    )
    dev = await VoiceDevice.connect_pcm(client)
    said = [cut_in_speech(speech.say(words)) for words in ("turn off the light", "dance")]
    for pcm in said:
        assert rms(pcm[-(len(pcm) % 1024) :]) > 300  # speech, short of a whole window
        await push_to_talk(dev, pcm, fmt="pcm")
        await dev.until(is_tts("stop"))
    assert [len(pcm) // 2 for pcm in transcriber.audio] == [len(pcm) // 2 for pcm in said]
    assert transcriber.audio == said


# ---- abort at every stage ----------------------------------------------------------------


async def test_abort_during_capture_recognises_nothing(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    await dev.send_audio(opus_packets(speech.say("turn off the light")), speed=2)
    await dev.abort()
    await dev.stop_listening()
    assert await dev.quiet(1.0) == []
    assert fake.bodies == []
    # The same device is heard normally afterwards.
    await push_to_talk(dev, speech.say("stop"))
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "stop"}
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["stop"]


async def test_audio_still_being_processed_at_an_abort_is_not_heard_after_it(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    # The relay's one audio thread is held so that the batch holding the whole utterance is
    # still queued when the abort comes: its windows must not begin the next utterance
    # (under load they did: "turn off the light dance" was heard for "dance").
    client = await voice_relay(make_relay, vad={"audio_threads": 1})
    voice = client.app[DEVICE_ROOM].voice
    assert voice is not None
    batcher = voice.batcher
    executor = batcher._executor
    first, second, holding = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        second.wait()

    held = [executor.submit(first.wait)]
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    await dev.send_audio(opus_packets(speech.say("turn off the light")), speed=50)
    await eventually(lambda: batcher._in_flight == 1)  # the first packet's job waits
    held.append(executor.submit(hold))
    first.set()  # that job runs; the rest of the utterance goes in the next, held behind
    await eventually(holding.is_set)
    await eventually(lambda: executor._work_queue.qsize() == 1)  # the rest's job queued
    await dev.abort()
    second.set()
    await asyncio.gather(*(asyncio.wrap_future(f) for f in held))
    assert await dev.quiet(1.0) == []
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=4)
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["dance"]


async def test_after_an_abort_the_mode_stays_in_force(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    # docs/protocol.md §1.3: only listen stop, listen start, goodbye or the end of the
    # connection end a mode; an abort cuts the answer and what was being heard.
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    await dev.send_audio(opus_packets(speech.say("turn off the light")), speed=2)
    await dev.abort()
    assert await dev.quiet(1.0) == []
    await dev.send_audio(opus_packets(speech.say("dance") + silence(1.0)), speed=4)
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    (await dev.answer()).check_spoken()
    assert chat_msgs(fake.bodies) == ["dance"]


async def test_abort_right_after_listen_stop_cancels_recognition(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("turn off the light"))
    await dev.abort()
    events = await dev.quiet(1.5)
    texts = texts_of(events)
    assert not any(kind == "audio" for kind, _ in events), "an aborted turn was spoken"
    assert not any(is_tts("start")(m) for m in texts)
    if not stt_texts(texts):  # recognition was cancelled: nothing reaches the business
        assert fake.bodies == []
    # The relay keeps listening to this device.
    await push_to_talk(dev, speech.say("dance"))
    assert stt_texts(await dev.until(is_stt)) == ["dance"]
    (await dev.answer()).check_spoken()


async def test_abort_during_the_business_request(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    stalling = StallingBusiness()
    fake.script = stalling
    client = await voice_relay(make_relay, business_overrides={"first_event_timeout_s": 10.0})
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("dance"))
    assert await dev.next_text() == {"session_id": dev.session_id, "type": "stt", "text": "dance"}
    await asyncio.wait_for(stalling.entered.wait(), 5)
    t0 = time.monotonic()
    await dev.abort()
    stop = await dev.next_text(timeout=2)
    assert stop == {
        "session_id": dev.session_id,
        "type": "tts",
        "state": "stop",
        "is_aborted": True,
    }
    async with asyncio.timeout(3):  # the relay hung up on the business
        while fake.disconnects == 0:
            await asyncio.sleep(0.02)
    assert time.monotonic() - t0 < 3
    assert chat_msgs(fake.bodies) == ["dance"]
    assert not any(kind == "audio" for kind, _ in dev.log)


# ---- wake word and bad input -------------------------------------------------------------


@pytest.mark.parametrize("text", ["你好小智", "你好，小智！", "Hi ESP", "", "   "])
async def test_wake_word_alone_asks_nothing(
    make_relay: RelayFactory, fake: FakeBusiness, text: str
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.send({"type": "listen", "state": "detect", "text": text})
    await wait_metric(client, "relay_wake_words_total", 1)
    assert await dev.quiet(0.3) == []
    assert fake.bodies == []
    assert await metric(client, "relay_wake_words_total") == 1


async def test_garbage_packets_are_counted_and_the_utterance_survives(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    garbage = [b"garbage!", b"\xff\xff\xff", b""]
    for packet in garbage[:2]:  # libopus really refuses these (an empty packet never decodes)
        with pytest.raises(opuslib_next.OpusError):
            opuslib_next.Decoder(16000, 1).decode(packet, 1920)
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("manual")
    for packet in garbage:
        await dev.send_packet(packet)
    await wait_metric(client, "relay_audio_errors_total", len(garbage))
    await dev.send_audio(opus_packets(speech.say("turn on the light")), speed=4)
    await dev.stop_listening()
    assert stt_texts(await dev.until(is_stt)) == ["turn on the light"]
    (await dev.answer()).check_spoken()
    assert await metric(client, "relay_audio_errors_total") == len(garbage)


async def test_pcm_frames_of_odd_size_are_counted_and_skipped(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect_pcm(client)
    await dev.listen("manual")
    await dev.send_packet(bytes(FRAME_BYTES - 1))
    await dev.send_packet(b"\x01")
    await wait_metric(client, "relay_audio_errors_total", 2)
    await dev.send_audio(pcm_frames(speech.say("what time is it")), speed=4)
    await dev.stop_listening()
    assert stt_texts(await dev.until(is_stt)) == ["what time is it"]
    (await dev.answer()).check_spoken("pcm")


async def test_audio_without_listen_start_is_dropped(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    packets = opus_packets(speech.say("dance"))
    await dev.send_audio(packets, speed=8)
    await wait_metric(client, 'relay_audio_dropped_total{reason="not_listening"}', len(packets))
    assert await dev.quiet(0.3) == []
    assert fake.bodies == []
    assert await metric(client, "relay_vad_segments_total") == 0


async def test_silence_in_auto_mode_gives_no_stt(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    packets = opus_packets(silence(2.0))
    await dev.send_audio(packets, speed=4)
    assert await dev.quiet(1.0) == []
    assert await dev.ping() < 1.0  # nothing hangs
    assert await metric(client, 'relay_audio_frames_total{direction="in"}') == len(packets)
    assert await metric(client, "relay_vad_segments_total") == 0
    assert fake.bodies == []


async def test_silence_in_manual_mode_gives_empty_stt_and_tts_stop(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, silence(1.0))
    assert await dev.until(is_tts("stop"), timeout=5) == [
        {"session_id": dev.session_id, "type": "stt", "text": ""},
        {"session_id": dev.session_id, "type": "tts", "state": "stop", "is_aborted": False},
    ]
    assert fake.bodies == []


async def test_manual_utterance_longer_than_max_is_cut_and_recognised(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay, vad={"max_utterance_s": 1.5})
    dev = await VoiceDevice.connect(client)
    # ~3 s: the cut at 1.5 s falls in the pause between the two commands.
    first, second = speech.say("turn on the light"), speech.say("what time is it")
    assert len(first) / 32000 < 1.5 < len(first) / 32000 + 0.3
    await dev.listen("manual")
    await dev.send_audio(opus_packets(first + silence(0.3) + second), speed=2)
    # Recognised while the button is still held: before any listen stop.
    assert stt_texts(await dev.until(is_stt, timeout=3)) == ["turn on the light"]
    async with asyncio.timeout(3):
        while not fake.bodies:
            await asyncio.sleep(0.02)
    assert chat_msgs(fake.bodies)[0] == "turn on the light"
    await dev.stop_listening()  # what followed the cut is the next utterance
    assert stt_texts(await dev.until(is_stt)) == ["what time is it"]
    answer = await dev.answer()
    while answer.aborted:  # the first answer is cut by the second utterance's
        answer = await dev.answer()
    answer.check_spoken()
    assert answer.captions == "Echo what time is it."
    assert chat_msgs(fake.bodies) == ["turn on the light", "what time is it"]


# ---- a failing recogniser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "errors", "reason"),
    [("error", 1, "refused"), ("stall", 1, "timeout"), ("empty", 0, "refused")],
)
async def test_asr_provider_failure_ends_the_turn(
    make_relay: RelayFactory,
    fake: FakeBusiness,
    speech: SpeechBank,
    aiohttp_server: Any,
    mode: Literal["error", "stall", "empty"],
    errors: int,
    reason: str,
) -> None:
    transcriber = FakeTranscriber(mode)
    server = await aiohttp_server(transcriber.app())
    openai = {"base_url": str(server.make_url("/")), "timeout_s": 0.5}
    client = await make_relay(asr={"provider": "openai", "openai": openai})
    dev = await VoiceDevice.connect(client)
    await push_to_talk(dev, speech.say("dance"))
    t0 = time.monotonic()
    assert await dev.until(is_tts("stop"), timeout=3) == [
        {"session_id": dev.session_id, "type": "stt", "text": ""},
        {"session_id": dev.session_id, "type": "tts", "state": "stop", "is_aborted": False},
    ]
    assert time.monotonic() - t0 < 1.5  # the stall is cut at openai.timeout_s
    assert transcriber.hits == 1
    assert fake.bodies == []
    sample = f'relay_provider_errors_total{{kind="asr",provider="openai",reason="{reason}"}}'
    assert await metric(client, sample) == errors


# ---- metrics and responsiveness -------------------------------------------------------------


async def test_a_voice_turn_is_measured(
    make_relay: RelayFactory, fake: FakeBusiness, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    dev = await VoiceDevice.connect(client)
    await dev.listen("auto")
    await dev.send_audio(opus_packets(speech.say("turn off the light") + silence(1.0)), speed=4)
    assert stt_texts(await dev.until(is_stt)) == ["turn off the light"]
    (await dev.answer()).check_spoken()
    for sample in (
        'relay_asr_seconds_count{provider="pocketsphinx"}',
        "relay_vad_segments_total",
        "relay_speech_end_to_first_audio_seconds_count",
        'relay_tts_seconds_count{provider="espeak"}',
    ):
        assert await metric(client, sample) >= 1, sample
    assert await metric(client, "relay_speech_end_to_first_audio_seconds_sum") < 5


async def pongs_while_recognising(
    client: TestClient[Any, Any], pcm: bytes
) -> tuple[list[float], str]:
    """Device A says `pcm` (push-to-talk); device B pings from A's listen stop to A's stt.
    Returns B's ping round trips and A's recognised text."""
    a = await VoiceDevice.connect(client, device_id="AA:00:00:00:00:01")
    b = await VoiceDevice.connect(client, device_id="BB:00:00:00:00:02")
    await a.listen("manual")
    await a.send_audio(opus_packets(pcm), speed=20)
    await asyncio.sleep(0.3)  # the VAD catches up: what is measured next is recognition
    rtts: list[float] = []
    done = asyncio.Event()

    async def pinger() -> None:
        while not done.is_set():
            rtts.append(await b.ping())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(pinger())
        await asyncio.sleep(0.05)
        await a.stop_listening()
        text = stt_texts(await a.until(is_stt))[0]
        done.set()
    # Cut A's answer and wait for the cut: a test that ends mid-answer would shut the relay
    # down while espeak-ng runs (the process is then left unreaped).
    await a.abort()
    assert (await a.until(is_tts("stop")))[-1]["is_aborted"] is True
    return rtts, text


async def test_other_devices_stay_responsive_during_recognition(
    make_relay: RelayFactory, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    # A short command: decoding it holds the loop ~20-40 ms (see the xfail below).
    rtts, text = await pongs_while_recognising(client, speech.say("what time is it"))
    assert text == "what time is it"
    assert len(rtts) >= 3
    assert max(rtts) < 0.1, rtts


# ---- known bugs ------------------------------------------------------------------------------


async def test_a_long_utterance_does_not_stall_other_devices(
    make_relay: RelayFactory, speech: SpeechBank
) -> None:
    client = await voice_relay(make_relay)
    pcm = speech.say("turn on the light. what time is it. dance. " * 6)
    assert 10 < len(pcm) / 32000 < 14  # under vad.max_utterance_s (15 s): one utterance
    # pocketsphinx holds the GIL while it decodes: in a thread of the relay this utterance
    # stalled the loop 80-280 ms every time; in a decoder process it costs the loop a pipe
    # round trip. A loaded machine can also pause this process once for as long (seen: one
    # ping of 171 ms among hundreds under 1 ms), so the best of three tries is what counts:
    # a decoder in the loop's process fails all three.
    worst: list[float] = []
    for _ in range(3):
        rtts, text = await pongs_while_recognising(client, pcm)
        assert text.startswith("turn on the light what time is it dance")
        worst.append(max(rtts))
        if worst[-1] < 0.06:
            break
    assert min(worst) < 0.06, worst
