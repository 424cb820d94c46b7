"""The connection's rules as tables (protocol/session_state.py): frames and events in,
verdicts and actions out; no server, no clock."""

from __future__ import annotations

import pytest

from protocol.binary import FrameType, encode_frame
from protocol.device import Custom, Hello, ListenMode, Ping
from protocol.errors import DeviceError
from protocol.session_state import (
    Audio,
    AudioVerdict,
    Deliver,
    Drop,
    Inbound,
    ListenAction,
    ListenState,
    Opened,
    Phase,
    Refuse,
)

HELLO = '{"type":"hello","version":2}'
PING = '{"type":"ping"}'
OPUS = bytes(range(7))


# ---- Inbound: frames before and after hello ----------------------------------------------


def test_before_hello_only_a_hello_opens_the_connection() -> None:
    assert Inbound(1).phase is Phase.AWAITING_HELLO
    inbound = Inbound(1)
    assert inbound.text(PING) == Refuse(DeviceError.NOT_READY)
    assert inbound.text("not json") == Refuse(DeviceError.BAD_JSON)
    assert inbound.binary(OPUS) == Drop(DeviceError.NOT_READY)  # audio before hello
    assert inbound.text(PING) == Refuse(DeviceError.NOT_READY)  # still waiting
    verdict = inbound.text(HELLO)
    assert isinstance(verdict, Opened)
    assert verdict.hello.version == 2
    assert inbound.phase is Phase.OPEN


def test_after_hello_messages_are_delivered_with_their_size() -> None:
    inbound = Inbound(1)
    inbound.text(HELLO)
    assert inbound.text(PING) == Deliver(Ping(), len(PING))
    again = inbound.text(HELLO)  # a repeated hello is the session's to ignore
    assert isinstance(again, Deliver)
    assert isinstance(again.message, Hello)
    assert inbound.text(b'{"type":"listen"}') == Refuse(DeviceError.MISSING_FIELD)
    assert inbound.binary(OPUS) == Audio(OPUS)


@pytest.mark.parametrize("version", [2, 3])
def test_json_in_a_binary_frame_is_read_as_text(version: int) -> None:
    inbound = Inbound(version)
    opened = inbound.binary(encode_frame(version, HELLO.encode(), FrameType.JSON))
    assert isinstance(opened, Opened)
    custom = b'{"type":"custom","payload":{"type":"report"}}'
    verdict = inbound.binary(encode_frame(version, custom, FrameType.JSON))
    assert isinstance(verdict, Deliver)
    assert isinstance(verdict.message, Custom)
    assert inbound.binary(encode_frame(version, OPUS)) == Audio(OPUS)


def test_a_bad_binary_header_is_reported_once_after_hello_and_never_before() -> None:
    inbound = Inbound(3)
    assert inbound.binary(b"\x00") == Drop(DeviceError.BAD_FRAME)
    assert inbound.binary(b"\x00") == Drop(DeviceError.BAD_FRAME)
    inbound.text(HELLO)
    assert inbound.binary(b"\x00") == Refuse(DeviceError.BAD_FRAME)
    assert inbound.binary(b"\x00") == Drop(DeviceError.BAD_FRAME)
    assert inbound.binary(encode_frame(3, OPUS)) == Audio(OPUS)


# ---- ListenState: the listen mode ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["manual", "auto", "realtime"])
def test_start_arms_the_mode(mode: ListenMode) -> None:
    state = ListenState()
    assert state.audio(speaking=False) is AudioVerdict.NOT_LISTENING
    assert state.start(mode, capturing=False) == [ListenAction.ARM]
    assert state.mode == mode
    assert state.audio(speaking=False) is AudioVerdict.FEED
    assert state.uses_vad is (mode != "manual")


def test_a_repeated_start_keeps_the_utterance_in_progress() -> None:
    state = ListenState()
    state.start("auto", capturing=False)
    assert state.start("auto", capturing=True) == [ListenAction.KEEP]
    assert state.start("realtime", capturing=True) == [ListenAction.KEEP]
    assert state.mode == "auto"
    # Push-to-talk always starts a new utterance; so does any start while not capturing.
    assert state.start("manual", capturing=True) == [ListenAction.ARM]
    assert state.start("auto", capturing=False) == [ListenAction.ARM]
    fresh = ListenState()
    assert fresh.start("auto", capturing=True) == [ListenAction.ARM]  # no mode yet


def test_a_manual_stop_waits_for_the_audio_received_before_it() -> None:
    state = ListenState()
    state.start("manual", capturing=False)
    assert state.stop(audio_pending=True) is ListenAction.DEFER_STOP
    assert state.stop_pending
    assert state.audio(speaking=False) is AudioVerdict.BACKLOG  # sent after the stop
    assert state.finish_stop() is ListenAction.FINISH_STOP
    assert (state.mode, state.stop_pending) == (None, False)


def test_a_start_while_a_stop_waits_finishes_that_stop_first() -> None:
    state = ListenState()
    state.start("manual", capturing=False)
    state.stop(audio_pending=True)
    assert state.start("manual", capturing=True) == [ListenAction.FINISH_STOP, ListenAction.ARM]
    assert (state.mode, state.stop_pending) == ("manual", False)


@pytest.mark.parametrize(
    ("mode", "pending"), [("manual", False), ("auto", True), ("realtime", False), (None, True)]
)
def test_other_stops_take_effect_at_once(mode: ListenMode | None, pending: bool) -> None:
    state = ListenState(mode)
    assert state.stop(audio_pending=pending) is ListenAction.FINISH_STOP
    assert state.mode is None
    assert state.audio(speaking=False) is AudioVerdict.NOT_LISTENING


@pytest.mark.parametrize(
    ("mode", "speaking", "verdict", "barge_in"),
    [
        ("auto", True, AudioVerdict.SPEAKING, False),  # its own answer heard back
        ("auto", False, AudioVerdict.FEED, False),
        ("realtime", True, AudioVerdict.FEED, True),  # the user may talk over the answer
        ("realtime", False, AudioVerdict.FEED, False),
        ("manual", True, AudioVerdict.FEED, False),
        (None, True, AudioVerdict.NOT_LISTENING, False),
    ],
)
def test_audio_and_barge_in_while_an_answer_plays(
    mode: ListenMode | None, speaking: bool, verdict: AudioVerdict, barge_in: bool
) -> None:
    state = ListenState(mode)
    assert state.audio(speaking=speaking) is verdict
    assert state.barge_in(speaking=speaking) is barge_in
