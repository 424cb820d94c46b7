"""The downlink pacer (docs/protocol.md §1.6): frames accounted when written, never more than the
play buffer plus one frame ahead of the device's clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.play_clock import Pacer

FRAME = 0.06
LEAD = 1.0


def test_a_fresh_answer_may_send_its_whole_buffer_at_once() -> None:
    pacer = Pacer(FRAME, LEAD)
    assert pacer.allowed(100.0) == 17  # 17 x 60 ms = 1020 ms <= 1000 + 60
    assert pacer.delay(100.0) == 0.0
    pacer.sent(100.0, 17)
    assert pacer.allowed(100.0) == 0
    assert abs(pacer.delay(100.0) - 0.02) < 1e-9  # one frame may go when the lead is 1000 ms
    assert abs(pacer.lead(100.0) - 1.02) < 1e-9
    assert pacer.allowed(100.02) == 1
    assert pacer.allowed(100.08) == 2


def test_frames_still_queued_count_as_playing() -> None:
    pacer = Pacer(FRAME, LEAD)
    assert pacer.allowed(5.0, queued=5) == 12
    assert pacer.allowed(5.0, queued=17) == 0
    assert abs(pacer.delay(5.0, queued=17) - 0.02) < 1e-9


def test_the_clock_restarts_after_the_device_ran_dry() -> None:
    pacer = Pacer(FRAME, LEAD)
    pacer.sent(0.0, 3)
    assert pacer.lead(10.0) == 0.0
    assert pacer.allowed(10.0) == 17
    pacer.sent(10.0)
    assert abs(pacer.lead(10.0) - FRAME) < 1e-9


@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 0.2),  # time until the sender looks again
            st.floats(0.0, 0.3),  # how long what it queued waits before being written
        ),
        min_size=1,
        max_size=60,
    )
)
def test_lead_at_write_time_never_exceeds_buffer_plus_one_frame(
    steps: list[tuple[float, float]],
) -> None:
    """Whatever the delays between queueing and writing, the lead on the write clock (which
    is where the device's clock starts) stays within §1.6's bound."""
    pacer = Pacer(FRAME, LEAD)
    now = 0.0
    queued: list[tuple[float, int]] = []  # (write time, frames), written in order
    for wait, write_delay in steps:
        now += wait
        while queued and queued[0][0] <= now:  # writes due by now happen first
            at, frames = queued.pop(0)
            pacer.sent(at, frames)
            assert pacer.lead(at) <= LEAD + FRAME + 1e-9
        k = pacer.allowed(now, sum(f for _, f in queued))
        if k:
            at = max([now + write_delay] + [t for t, _ in queued])
            queued.append((at, k))
    for at, frames in queued:
        pacer.sent(at, frames)
        assert pacer.lead(at) <= LEAD + FRAME + 1e-9


def test_play_start_is_when_a_frame_written_now_plays() -> None:
    p = Pacer(0.06, 1.0)
    assert p.play_start(10.0) == 10.0  # nothing playing: at once
    assert p.play_start(10.0, frames_before=3) == pytest.approx(10.18)
    p.sent(10.0, 5)  # plays until 10.3
    assert p.play_start(10.1) == pytest.approx(10.3)
    assert p.play_start(10.1, frames_before=2) == pytest.approx(10.42)
    assert p.play_start(11.0) == 11.0  # the buffer ran dry: a new frame plays on arrival


def test_reset_forgets_what_was_playing() -> None:
    p = Pacer(0.06, 1.0)
    p.sent(10.0, 10)
    assert p.play_end == pytest.approx(10.6)
    p.reset()
    assert p.play_end == 0.0
    assert p.lead(10.1) == 0.0
    assert p.play_start(10.1) == 10.1
