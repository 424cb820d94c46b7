"""The device's play clock (docs/protocol.md §1.6): when each frame the relay wrote will play,
how many more frames may go out now, and so when `sentence_start` and `tts stop` are due.
Pure: the clock is passed in."""

from __future__ import annotations


class Pacer:
    """Audio pacing against a monotonic clock (docs/protocol.md §1.6).

    `play_end` is when the device will have played every frame written so far; frames still
    queued in the relay count as playing right after it. A frame may go out while the lead
    (play_end - now) is at most `lead_s`, so the device's queue never holds more than
    `play_buffer_duration` plus one frame. Frames are accounted when written, not when
    queued: a frame that waits behind other devices' writes starts the device's clock later.
    """

    def __init__(self, frame_s: float, lead_s: float) -> None:
        self.frame_s = frame_s
        self.lead_s = lead_s
        self._play_end = 0.0

    def _room(self, now: float, queued: int) -> float:
        return self.lead_s - (max(self._play_end, now) - now) - queued * self.frame_s

    def allowed(self, now: float, queued: int = 0) -> int:
        """How many more frames may be queued at `now`, with `queued` not yet written."""
        room = self._room(now, queued)
        # A hair of tolerance: the float sum of 17 frames of 0.06 s is not exactly 1.02.
        return int(room / self.frame_s + 1e-9) + 1 if room >= -1e-9 else 0

    def delay(self, now: float, queued: int = 0) -> float:
        """Seconds to wait before the next frame may be queued."""
        return max(0.0, -self._room(now, queued))

    @property
    def play_end(self) -> float:
        """When the device will have played every frame written so far (loop clock)."""
        return self._play_end

    def reset(self) -> None:
        """Nothing is left to play: the device flushed its buffer."""
        self._play_end = 0.0

    def sent(self, now: float, frames: int = 1) -> None:
        """Record that `frames` frames were written at `now`."""
        self._play_end = max(self._play_end, now) + frames * self.frame_s

    def lead(self, now: float) -> float:
        """Audio written to the device beyond `now`, in seconds."""
        return max(0.0, self._play_end - now)

    def play_start(self, now: float, frames_before: int = 0) -> float:
        """When a frame written at `now`, after `frames_before` others written with it,
        starts playing: a caption held for it is due then (§1.6)."""
        return max(self._play_end, now) + frames_before * self.frame_s
