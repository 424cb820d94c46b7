"""Uplink decoding: Opus/PCM packets in, mono 16 kHz s16le out (docs/protocol.md §1.2, §1.4)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import opuslib_next
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_tts.uplink import AudioError, UplinkDecoder
from protocol.audio_format import AudioFormat

I16 = npt.NDArray[np.int16]


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: int = 8000) -> I16:
    """A sine tone as int16 samples."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def samples(pcm: bytes) -> I16:
    """s16le bytes as int16 samples."""
    return np.frombuffer(pcm, dtype="<i2")


def peak_hz(x: I16, rate: int) -> float:
    """The strongest frequency in the signal."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spectrum))])


def opus_packets(x: I16, rate: int, channels: int = 1, frame_ms: int = 60) -> list[bytes]:
    """Encode interleaved samples as Opus packets the way a device does."""
    encoder = opuslib_next.Encoder(rate, channels, opuslib_next.APPLICATION_VOIP)
    step = rate * frame_ms // 1000
    frames = [
        x[i : i + step * channels] for i in range(0, x.size - step * channels + 1, step * channels)
    ]
    return [bytes(encoder.encode(f.tobytes(), step)) for f in frames]


def test_opus_16k_60ms_packet_decodes_to_960_samples_of_the_same_tone() -> None:
    decoder = UplinkDecoder(AudioFormat())
    out = [decoder.decode(p) for p in opus_packets(tone(1.2, 16000), 16000)]
    assert len(out) == 20
    assert all(len(o) == 960 * 2 for o in out)
    assert peak_hz(samples(b"".join(out[2:])), 16000) == pytest.approx(440, abs=5)


def test_opus_24k_uplink_comes_out_at_16k() -> None:
    decoder = UplinkDecoder(AudioFormat(sample_rate=24000))
    out = [decoder.decode(p) for p in opus_packets(tone(1.2, 24000), 24000)]
    assert [len(o) for o in out] == [960 * 2] * 20
    assert peak_hz(samples(b"".join(out[2:])), 16000) == pytest.approx(440, abs=5)


def test_stereo_opus_is_folded_to_mono() -> None:
    stereo = np.repeat(tone(0.6, 16000), 2)
    decoder = UplinkDecoder(AudioFormat(channels=2))
    out = [decoder.decode(p) for p in opus_packets(stereo, 16000, channels=2)]
    assert [len(o) for o in out] == [960 * 2] * 10
    assert peak_hz(samples(b"".join(out[2:])), 16000) == pytest.approx(440, abs=5)


def test_pcm_24k_is_resampled_to_16k_length() -> None:
    decoder = UplinkDecoder(AudioFormat(format="pcm", sample_rate=24000, frame_duration_ms=20))
    x = tone(2.0, 24000)
    out = b"".join(decoder.decode(x[i : i + 480].tobytes()) for i in range(0, x.size, 480))
    # The streaming resampler holds back its filter delay (~36 ms), never more.
    assert 32000 - 16000 * 0.05 <= len(out) // 2 <= 32000
    assert peak_hz(samples(out), 16000) == pytest.approx(440, abs=5)


def test_pcm_at_target_rate_passes_through_unchanged() -> None:
    decoder = UplinkDecoder(AudioFormat(format="pcm", frame_duration_ms=20))
    frame = tone(0.02, 16000).tobytes()
    assert decoder.decode(frame) == frame


@pytest.mark.parametrize(
    "packet", [b"\xff", b"\x03", b"\xfb\x00", b"\xff\xff\xff", b"\x0e\xfaq\xa4"]
)
def test_garbage_opus_raises_audio_error_and_the_stream_goes_on(packet: bytes) -> None:
    decoder = UplinkDecoder(AudioFormat())
    good = opus_packets(tone(0.12, 16000), 16000)
    assert len(decoder.decode(good[0])) == 1920
    with pytest.raises(AudioError):
        decoder.decode(packet)
    assert len(decoder.decode(good[1])) == 1920


@pytest.mark.parametrize("fmt", ["opus", "pcm"])
def test_empty_packet_raises_audio_error(fmt: str) -> None:
    decoder = UplinkDecoder(AudioFormat(format="pcm") if fmt == "pcm" else AudioFormat())
    with pytest.raises(AudioError):
        decoder.decode(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1500))
def test_any_bytes_decode_to_pcm_or_audio_error(packet: bytes) -> None:
    decoder = UplinkDecoder(AudioFormat(sample_rate=24000))
    try:
        out = decoder.decode(packet)
    except AudioError:
        return
    assert len(out) % 2 == 0
    assert len(out) <= 16000 * 120 // 1000 * 2  # at most the longest Opus packet, 120 ms


@pytest.mark.parametrize(("channels", "size"), [(1, 1), (1, 641), (2, 2), (2, 642), (2, 6)])
def test_pcm_that_is_not_whole_samples_raises_audio_error(channels: int, size: int) -> None:
    decoder = UplinkDecoder(AudioFormat(format="pcm", channels=channels))
    with pytest.raises(AudioError):
        decoder.decode(bytes(size))


def test_stereo_pcm_is_averaged_to_mono() -> None:
    left = tone(0.02, 16000, amplitude=20000)
    right = np.full(left.size, 3000, dtype="<i2")
    stereo = np.stack([left, right], axis=1).reshape(-1).astype("<i2")
    decoder = UplinkDecoder(AudioFormat(format="pcm", channels=2))
    out = samples(decoder.decode(stereo.tobytes()))
    expected = (left.astype(np.int32) + 3000) // 2
    assert out.tolist() == expected.tolist()


def test_stereo_pcm_at_full_scale_does_not_wrap() -> None:
    loud = np.full(640, 32767, dtype="<i2")
    decoder = UplinkDecoder(AudioFormat(format="pcm", channels=2))
    assert set(samples(decoder.decode(loud.tobytes())).tolist()) == {32767}


def test_chunked_resampling_equals_resampling_the_whole() -> None:
    x = (tone(1.5, 24000) + tone(1.5, 24000, freq=3100.0, amplitude=4000)).astype("<i2")
    whole = soxr.resample(x, 24000, 16000)
    rng = np.random.default_rng(7)
    decoder = UplinkDecoder(AudioFormat(format="pcm", sample_rate=24000))
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 700))
        out.append(decoder.decode(x[i : i + n].tobytes()))
        i += n
    chunked = samples(b"".join(out)).astype(np.int32)
    assert chunked.size > whole.size - 16000 * 0.05
    # Samples agree to rounding: a per-chunk resampler would click at every seam instead.
    assert np.abs(chunked - whole[: chunked.size].astype(np.int32)).max() <= 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44100},
        {"frame_duration_ms": 30},
        {"channels": 3},
        {"format": "pcm", "sample_rate": 0},
        {"format": "mp3"},
    ],
)
def test_formats_the_decoder_cannot_take_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="format|Opus"):
        UplinkDecoder(AudioFormat(**kwargs))  # type: ignore[arg-type]


def test_target_rate_outside_opus_rates_goes_through_the_resampler() -> None:
    decoder = UplinkDecoder(AudioFormat(), target_rate=22050)
    out = b"".join(decoder.decode(p) for p in opus_packets(tone(1.2, 16000), 16000))
    assert 22050 * 1.2 - 22050 * 0.05 <= len(out) // 2 <= 22050 * 1.2
    assert peak_hz(samples(out), 22050) == pytest.approx(440, abs=5)
