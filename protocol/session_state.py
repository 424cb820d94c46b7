"""The device connection's rules, sans I/O (docs/protocol.md §1.2-§1.4): what each frame the
device sends means in each state, and how the listen mode moves.

The I/O code feeds in what happened and does what comes out; nothing here reads a clock,
a socket or a task. Two machines:

`Inbound` (one per connection) turns a WebSocket frame into one verdict, with one error
policy in every phase (a binary frame carrying JSON, versions 2 and 3, is read as text):

    frame                awaiting hello          open
    text: hello          Opened                  Deliver (a repeated hello)
    text: other          Refuse(not_ready)       Deliver
    text: undecodable    Refuse(code)            Refuse(code)
    binary: audio        Drop(not_ready)         Audio
    binary: bad header   Drop(code)              Refuse(code) once, then Drop(code)

`ListenState` (one per session) holds the listen mode (§1.3) and whether a manual
`listen stop` waits for the audio received before it:

    event           no mode          manual                    auto / realtime
    listen start m  mode m, ARM      mode m, ARM               KEEP when capturing and m is
                                                               not manual; else mode m, ARM
    listen stop     FINISH_STOP      DEFER_STOP while audio    FINISH_STOP
                                     is pending, else
                                     FINISH_STOP
    audio packet    not_listening    FEED (backlog while a     speaking in auto mode while
                                     stop waits)               an answer plays; else FEED
    speech starts   -                -                         barge in: realtime mode while
                                                               an answer plays

`FINISH_STOP` ends the utterance being captured and clears the mode; a `listen start` while a
stop waits finishes that stop first. An `abort` leaves the mode as it is: what the user says
next is heard.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol import device
from protocol.binary import FrameType, decode_frame
from protocol.device import DeviceMessage, Hello, ListenMode
from protocol.errors import DeviceError, ProtocolError


class Phase(StrEnum):
    """Where a device connection is (§1.2)."""

    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Opened:
    """The device's hello: answer it, the connection is open."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Deliver:
    """A decoded message for the session; `size` is its JSON's length in bytes."""

    message: DeviceMessage
    size: int


@dataclass(frozen=True, slots=True)
class Audio:
    """An uplink audio packet (§1.4)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """Tell the device `code` in an `error` message (§1.5), and count it."""

    code: DeviceError


@dataclass(frozen=True, slots=True)
class Drop:
    """Count the frame under `code` and send nothing."""

    code: DeviceError


Verdict = Opened | Deliver | Audio | Refuse | Drop


class Inbound:
    """One connection's reading of the device's frames."""

    def __init__(self, protocol_version: int) -> None:
        self.version = protocol_version
        self.phase = Phase.AWAITING_HELLO
        self._bad_frame_reported = False

    def text(self, data: bytes | str) -> Verdict:
        """A text frame (or the JSON of a binary one)."""
        try:
            msg = device.decode(data)
        except ProtocolError as exc:
            return Refuse(exc.code)
        if self.phase is Phase.OPEN:
            return Deliver(msg, len(data))
        if isinstance(msg, Hello):
            self.phase = Phase.OPEN
            return Opened(msg)
        return Refuse(DeviceError.NOT_READY)

    def binary(self, data: bytes) -> Verdict:
        """A binary frame: audio, or JSON in a version 2/3 header."""
        try:
            frame = decode_frame(self.version, data)
        except ProtocolError as exc:
            # Once: a broken framer would flood the device with errors.
            if self.phase is Phase.OPEN and not self._bad_frame_reported:
                self._bad_frame_reported = True
                return Refuse(exc.code)
            return Drop(exc.code)
        if frame.type is FrameType.JSON:
            return self.text(frame.payload)
        if self.phase is Phase.OPEN:
            return Audio(frame.payload)
        return Drop(DeviceError.NOT_READY)


class ListenAction(StrEnum):
    """What the microphone pipeline does after a listen event."""

    ARM = "arm"  # a new mode: forget the VAD's history, wait for speech
    KEEP = "keep"  # the firmware repeated itself: keep the utterance in progress
    FINISH_STOP = "finish_stop"  # end the utterance being captured; no mode
    DEFER_STOP = "defer_stop"  # finish the stop once the audio received before it is done


class AudioVerdict(StrEnum):
    """What becomes of one uplink packet; the drops are `audio_dropped` reasons."""

    FEED = "feed"
    NOT_LISTENING = "not_listening"
    SPEAKING = "speaking"
    BACKLOG = "backlog"


@dataclass(slots=True)
class ListenState:
    """The listen mode of one session and a manual stop waiting for its audio."""

    mode: ListenMode | None = None
    stop_pending: bool = False

    def start(self, mode: ListenMode, *, capturing: bool) -> list[ListenAction]:
        """`listen start` in `mode`; `capturing`: an utterance is being captured."""
        actions = [self.finish_stop()] if self.stop_pending else []
        if self.mode is not None and capturing and mode != "manual":
            return [*actions, ListenAction.KEEP]
        self.mode = mode
        return [*actions, ListenAction.ARM]

    def stop(self, *, audio_pending: bool) -> ListenAction:
        """`listen stop`; `audio_pending`: audio received before it is still being processed."""
        if self.mode == "manual" and audio_pending:
            self.stop_pending = True
            return ListenAction.DEFER_STOP
        return self.finish_stop()

    def finish_stop(self) -> ListenAction:
        """The stop takes effect: the utterance ends and the mode is cleared."""
        self.mode = None
        self.stop_pending = False
        return ListenAction.FINISH_STOP

    def audio(self, *, speaking: bool) -> AudioVerdict:
        """One uplink packet; `speaking`: an answer is being spoken to the device."""
        if self.mode is None:
            return AudioVerdict.NOT_LISTENING
        if self.stop_pending:
            return AudioVerdict.BACKLOG
        if self.mode == "auto" and speaking:
            # The device's own answer, heard back, is not the user (§1.3).
            return AudioVerdict.SPEAKING
        return AudioVerdict.FEED

    def barge_in(self, *, speaking: bool) -> bool:
        """Speech started: does it interrupt the answer (realtime mode, §1.3)?"""
        return self.mode == "realtime" and speaking

    @property
    def uses_vad(self) -> bool:
        """Push-to-talk ends at `listen stop`: no speech detection is needed."""
        return self.mode != "manual"
