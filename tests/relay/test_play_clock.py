"""The play clock decides `tts stop` and `sentence_start` (docs/protocol.md §1.6), end to end
over a real WebSocket: a client that plays frames back to back from their arrival and
flushes its playback queue on `tts stop`, as py-xiaozhi and the xiaozhi-server browser
client do, hears every answer to its last frame, and each caption shows as its sentence is
heard. Typed text (`listen detect`, §1.3) starts the turns: no recogniser is needed here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from asr_tts.codec import FrameEncoder
from asr_tts.tts.base import Voice
from asr_tts.tts.espeak import EmbeddedTTS
from asr_tts.tts.speaker import Speaker
from protocol.audio_format import AudioFormat
from protocol.binary import FrameType, decode_frame
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, open_stream, session_of, sse

FRAME_S = 0.06
# Three sentences, each longer than the play buffer (so the next one's frames go out while
# its caption is held), 4.7 s in all: every check below holds for any length, and the
# answer plays out in real time, once per protocol version.
STORY = "A small robot lived by the sea. It counted the waves. One day it laughed."


@dataclass
class Playback:
    """A client's player: each frame plays when it arrives or when the one before ends."""

    starts: list[float] = field(default_factory=list)  # play start of each frame
    end: float = 0.0
    captions: list[tuple[float, str]] = field(default_factory=list)  # (arrival, text)
    emotions: list[tuple[float, str]] = field(default_factory=list)
    stop_at: float | None = None
    stop: dict[str, Any] | None = None

    def frame(self, now: float) -> None:
        start = max(now, self.end)
        self.starts.append(start)
        self.end = start + FRAME_S

    @property
    def lost_s(self) -> float:
        """Audio still queued when `tts stop` arrived: flushed, never heard."""
        assert self.stop_at is not None
        return max(0.0, self.end - self.stop_at)


async def play_answer(dev: Device, timeout: float = 20.0) -> Playback:
    """Receive one answer up to `tts stop`, playing it as a flushing client does."""
    loop = asyncio.get_running_loop()
    pb = Playback()
    async with asyncio.timeout(timeout):
        while pb.stop is None:
            msg = await dev.ws.receive()
            now = loop.time()
            if msg.type == WSMsgType.BINARY:
                frame = decode_frame(dev.version, msg.data)
                assert frame.type is FrameType.AUDIO
                pb.frame(now)
                continue
            assert msg.type == WSMsgType.TEXT, msg
            m = orjson.loads(msg.data)
            if m.get("type") == "llm":
                pb.emotions.append((now, m["emotion"]))
            elif m.get("type") == "tts" and m["state"] == "sentence_start":
                pb.captions.append((now, m["text"]))
            elif m.get("type") == "tts" and m["state"] == "stop":
                pb.stop, pb.stop_at = m, now
    return pb


def story_script(emotion: str | None = None, text: str = STORY) -> Any:
    async def script(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        sid = session_of(body)
        resp = await open_stream(request)
        details: dict[str, Any] = {"answer": text}
        if emotion is not None:
            details["emotion"] = emotion
        event = {"event": "message", "type": "chat", "session_id": sid, "details": details}
        await resp.write(sse(event))
        await resp.write(sse({"event": "message_end", "session_id": sid}))
        return resp

    return script


async def sentence_frames(text: str) -> list[tuple[str, int]]:
    """(caption, frames) of each sentence as the relay cuts and encodes `text`: the same
    speaker, provider and encoder (espeak-ng is deterministic)."""
    speaker = Speaker({"embedded": EmbeddedTTS()}, "embedded")
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    return [(s, len(f)) async for s, f in speaker.sentences(text, Voice(), encoder)]


async def typed(dev: Device, text: str) -> None:
    await dev.send(
        {"session_id": dev.session_id, "type": "listen", "state": "detect", "text": text}
    )


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_a_flushing_client_hears_the_whole_answer(
    make_relay: RelayFactory, fake: FakeBusiness, version: int
) -> None:
    fake.script = story_script()
    client = await make_relay()
    dev = await Device.connect(client, version=version)
    await typed(dev, "tell me a story")
    assert await dev.recv() == {
        "session_id": dev.session_id,
        "type": "stt",
        "text": "tell me a story",
    }
    await dev.recv_until(lambda m: m.get("type") == "tts" and m["state"] == "start")
    pb = await play_answer(dev)
    assert pb.stop == {
        "session_id": dev.session_id,
        "type": "tts",
        "state": "stop",
        "is_aborted": False,
    }
    expected = await sentence_frames(STORY)
    assert len(pb.starts) == sum(n for _, n in expected) > 50  # several seconds of speech
    assert pb.lost_s == 0.0, f"{pb.lost_s * 1000:.0f} ms of the answer flushed at tts stop"
    # Not held back either: the stop comes within a frame of the end (a loaded machine
    # may add a few ms of scheduling).
    assert pb.stop_at is not None
    assert pb.stop_at - pb.end <= FRAME_S + 0.05
    # Each caption shows as its sentence starts playing, within a frame.
    assert [text for _, text in pb.captions] == [text for text, _ in expected]
    first = 0
    for (arrival, text), (_, n) in zip(pb.captions, expected, strict=True):
        skew = arrival - pb.starts[first]
        assert abs(skew) <= FRAME_S + 0.02, f"caption {text!r} {skew * 1000:+.0f} ms off its audio"
        first += n


async def test_the_answer_s_emotion_shows_as_it_is_heard(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    # One sentence: what is checked is the emotion against the answer's first audio.
    fake.script = story_script(emotion="happy", text="Hello there.")
    client = await make_relay()
    dev = await Device.connect(client)
    await typed(dev, "tell me a story")
    await dev.recv_until(lambda m: m.get("type") == "tts" and m["state"] == "start")
    pb = await play_answer(dev)
    assert [e for _, e in pb.emotions] == ["happy"]
    (emotion_at, _), (caption_at, _) = pb.emotions[0], pb.captions[0]
    assert emotion_at <= caption_at  # before the answer's speech
    assert abs(emotion_at - pb.starts[0]) <= FRAME_S + 0.02


async def test_an_abort_stops_at_once_and_no_caption_follows(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    fake.script = story_script(text="Well, well, well. " + STORY)
    client = await make_relay()
    dev = await Device.connect(client)
    await typed(dev, "tell me a story")
    first = await dev.recv_until(lambda m: m.get("state") == "sentence_start")
    assert first[-1]["text"] == "Well, well, well."
    # The next caption is held until the first sentence has played (about a second) while
    # the frames of the next second are already on the wire.
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await dev.send({"session_id": dev.session_id, "type": "abort"})
    pb = await play_answer(dev)
    assert pb.stop is not None
    assert pb.stop["is_aborted"] is True
    assert pb.stop_at is not None
    assert pb.stop_at - sent < 0.2  # at once, not when the queued audio would have played
    assert pb.captions == []  # the next sentence's caption was dropped with the answer
    # Nothing of the cut answer arrives afterwards: no held caption, no stop.
    with pytest.raises(TimeoutError):
        await dev.recv(timeout=1.5)


async def test_the_stop_margin_is_configured(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    # Web clients start playing a few hundred ms after the first frame arrives: an operator
    # serving them holds tts stop longer.
    fake.script = story_script(text="Hello there.")
    client = await make_relay(tts={"stop_margin_ms": 400})
    dev = await Device.connect(client)
    await typed(dev, "hi")
    await dev.recv_until(lambda m: m.get("type") == "tts" and m["state"] == "start")
    pb = await play_answer(dev)
    assert pb.stop_at is not None
    assert 0.4 - 0.02 <= pb.stop_at - pb.end <= 0.4 + FRAME_S + 0.05
