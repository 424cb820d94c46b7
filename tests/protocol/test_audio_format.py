"""The one audio format type and the downlink the relay chooses (docs/protocol.md §1.2)."""

from __future__ import annotations

import pytest

from protocol.audio_format import PCM_FALLBACK_RATE, AudioFormat, downlink_for


def test_defaults_and_derived_lengths() -> None:
    fmt = AudioFormat()
    assert (fmt.format, fmt.sample_rate, fmt.channels, fmt.frame_duration_ms) == (
        "opus",
        16000,
        1,
        60,
    )
    assert fmt.frame_samples == 960
    assert fmt.frame_s == 0.06
    assert fmt.describe() == "opus 16000 Hz x1 60 ms"
    assert fmt.decode_problem() is None
    assert fmt.encode_problem() is None


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [
        (AudioFormat("mp3"), "unknown format 'mp3'"),  # type: ignore[arg-type]
        (AudioFormat("pcm", 0), "invalid format pcm 0 Hz x1 60 ms"),
        (AudioFormat("pcm", 16000, 3), "invalid format"),
        (AudioFormat("pcm", 16000, 1, 0), "invalid format"),
        (AudioFormat("opus", 44100), "Opus cannot carry opus 44100 Hz"),
        (AudioFormat("opus", 16000, 1, 30), "Opus cannot carry"),
    ],
)
def test_what_cannot_be_decoded(fmt: AudioFormat, problem: str) -> None:
    assert (fmt.decode_problem() or "").startswith(problem)
    assert fmt.encode_problem() == fmt.decode_problem()


@pytest.mark.parametrize("rate", [11025, 8001, 12345, 44101])
def test_pcm_at_any_rate_decodes_but_not_every_frame_length_encodes(rate: int) -> None:
    fmt = AudioFormat("pcm", rate, 1, 60)
    assert fmt.decode_problem() is None
    assert fmt.encode_problem() == f"60 ms is not a whole number of samples at {rate} Hz"


def test_opus_devices_get_the_configured_downlink() -> None:
    for uplink in (AudioFormat(), AudioFormat("opus", 48000, 2, 20), AudioFormat("opus", 44100)):
        assert downlink_for(uplink, 24000, 60) == AudioFormat("opus", 24000, 1, 60)


@pytest.mark.parametrize(
    ("rate", "frame_ms", "expected"),
    [
        (16000, 60, AudioFormat("pcm", 16000, 1, 60)),  # the device's own rate, mono
        (44100, 60, AudioFormat("pcm", 44100, 1, 60)),
        (22050, 60, AudioFormat("pcm", 22050, 1, 60)),
        (11025, 60, AudioFormat("pcm", 11025, 1, 40)),  # 40 and 80 ms as near: the shorter
        (11025, 100, AudioFormat("pcm", 11025, 1, 80)),  # 80 is nearer than 120
        (8001, 60, AudioFormat("pcm", PCM_FALLBACK_RATE, 1, 60)),  # nothing whole: fall back
        (12345, 20, AudioFormat("pcm", PCM_FALLBACK_RATE, 1, 20)),
    ],
)
def test_pcm_devices_get_a_downlink_the_relay_can_send(
    rate: int, frame_ms: int, expected: AudioFormat
) -> None:
    got = downlink_for(AudioFormat("pcm", rate, 2, 20), 24000, frame_ms)
    assert got == expected
    assert got.encode_problem() is None
