"""Downlink frames, resampling and WAV parsing, checked on bytes (docs/protocol.md §1.2, §1.4)."""

from __future__ import annotations

import io
import math
import struct
import wave

import numpy as np
import pytest

from asr_tts.codec import FrameEncoder, OpusDecoder, pcm_from_wav, resample
from asr_tts.pcm import Pcm
from protocol.audio_format import AudioFormat


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: int = 8000) -> Pcm:
    """A sine tone as 16-bit mono PCM."""
    t = np.arange(round(seconds * rate)) / rate
    samples = (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")
    return Pcm(samples.tobytes(), rate)


def rms(samples: bytes) -> float:
    """Root mean square of s16le samples."""
    x = np.frombuffer(samples, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def peak_hz(pcm: Pcm) -> float:
    """The strongest frequency in the signal."""
    x = np.frombuffer(pcm.samples, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(x.size, 1 / pcm.sample_rate)[int(np.argmax(spectrum))])


def wav_bytes(pcm: Pcm, channels: int = 1) -> bytes:
    """A WAV file as the stdlib writes it."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(pcm.sample_rate)
        w.writeframes(pcm.samples)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("seconds", "rate"),
    [(0.06, 24000), (0.061, 24000), (0.01, 24000), (1.0, 24000), (1.0, 22050), (0.5, 16000)],
)
def test_opus_frames_count_and_decode_to_whole_frames(seconds: float, rate: int) -> None:
    encoder = FrameEncoder(AudioFormat(sample_rate=24000))
    frames = encoder.encode(tone(seconds, rate))
    assert len(frames) == math.ceil(round(seconds * 1000) / 60)
    decoder = OpusDecoder(24000)
    for frame in frames:
        assert 0 < len(frame) < 1000
        assert len(decoder.decode(frame)) == 1440 * 2  # 60 ms at 24 kHz, 16-bit


def test_opus_frames_carry_the_sound() -> None:
    source = tone(1.2, 24000)
    frames = FrameEncoder(AudioFormat(sample_rate=24000)).encode(source)
    decoder = OpusDecoder(24000)
    decoded = b"".join(decoder.decode(f) for f in frames)
    # Skip the codec's start-up; the body of the tone survives with its level and pitch.
    body = Pcm(decoded[2880 * 2 : 2880 * 16], 24000)
    assert rms(body.samples) == pytest.approx(rms(source.samples), rel=0.2)
    assert peak_hz(body) == pytest.approx(440, abs=10)


def test_opus_silence_stays_silent() -> None:
    frames = FrameEncoder(AudioFormat(sample_rate=24000)).encode(Pcm(bytes(24000 * 2), 24000))
    decoder = OpusDecoder(24000)
    assert len(frames) == 17
    assert all(rms(decoder.decode(f)) < 10 for f in frames)


@pytest.mark.parametrize(("rate", "ms"), [(16000, 60), (16000, 20), (24000, 60), (8000, 10)])
def test_pcm_frames_have_exact_size(rate: int, ms: int) -> None:
    source = tone(0.25, rate)
    frames = FrameEncoder(AudioFormat("pcm", rate, 1, ms)).encode(source)
    assert all(len(f) == rate * ms // 1000 * 2 for f in frames)
    assert len(frames) == math.ceil(250 / ms)
    joined = b"".join(frames)
    assert joined[: len(source.samples)] == source.samples
    assert joined[len(source.samples) :] == bytes(len(joined) - len(source.samples))


def test_pcm_frames_are_resampled_to_the_declared_rate() -> None:
    frames = FrameEncoder(AudioFormat("pcm", 16000, 1, 60)).encode(tone(0.6, 22050))
    assert len(frames) == 10
    assert all(len(f) == 1920 for f in frames)
    assert peak_hz(Pcm(b"".join(frames), 16000)) == pytest.approx(440, abs=5)


def test_stereo_pcm_frames_duplicate_the_mono_samples() -> None:
    source = tone(0.02, 16000)
    (frame,) = FrameEncoder(AudioFormat("pcm", 16000, 2, 20)).encode(source)
    x = np.frombuffer(frame, dtype="<i2")
    assert x.size == 640
    assert np.array_equal(x[0::2], x[1::2])
    assert x[0::2].tobytes() == source.samples


def test_empty_pcm_gives_no_frames() -> None:
    assert FrameEncoder(AudioFormat(sample_rate=24000)).encode(Pcm(b"", 22050)) == []
    assert FrameEncoder(AudioFormat("pcm", 24000)).encode(Pcm(b"", 24000)) == []


@pytest.mark.parametrize(
    "fmt",
    [
        AudioFormat("opus", 22050),
        AudioFormat("opus", 24000, 1, 30),
        AudioFormat("pcm", 22050, 1, 7),
        AudioFormat("pcm", 16000, 0, 60),
        AudioFormat("pcm", 16000, 1, 0),
    ],
)
def test_impossible_formats_are_refused(fmt: AudioFormat) -> None:
    with pytest.raises(ValueError, match="format|Opus|samples"):
        FrameEncoder(fmt)


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (24000, 16000), (16000, 48000)])
def test_resample_scales_length_and_keeps_pitch(src: int, dst: int) -> None:
    source = tone(1.0, src)
    out = resample(source, dst)
    assert out.sample_rate == dst
    assert abs(len(out.samples) // 2 - dst) <= 1
    assert peak_hz(out) == pytest.approx(440, abs=2)
    assert rms(out.samples) == pytest.approx(rms(source.samples), rel=0.05)


def test_resample_to_the_same_rate_is_identity() -> None:
    source = tone(0.1, 16000)
    assert resample(source, 16000) is source


def test_opus_decoder_conceals_a_lost_packet_with_one_frame() -> None:
    decoder = OpusDecoder(16000, frame_duration_ms=60)
    assert len(decoder.decode(b"")) == 960 * 2


def test_pcm_rejects_odd_byte_counts_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="even"):
        Pcm(b"\x00\x00\x00", 16000)
    with pytest.raises(ValueError, match="positive"):
        Pcm(b"", 0)
    assert Pcm(bytes(32000), 16000).duration_s == 1.0


def test_wav_as_the_stdlib_writes_it() -> None:
    source = tone(0.1, 22050)
    assert pcm_from_wav(wav_bytes(source)) == source


def test_wav_streamed_with_placeholder_sizes_runs_to_end_of_input() -> None:
    # The exact header espeak-ng --stdout prints: RIFF and data sizes are 0x7ffff0xx.
    source = tone(0.1, 22050)
    header = bytearray(wav_bytes(Pcm(b"", 22050)))
    struct.pack_into("<I", header, 4, 0x7FFFF024)
    struct.pack_into("<I", header, 40, 0x7FFFF000)
    assert pcm_from_wav(bytes(header) + source.samples + b"\x01") == source


def test_wav_skips_unknown_chunks_with_their_padding() -> None:
    source = tone(0.01, 16000)
    plain = wav_bytes(source)
    extra = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # odd size, one pad byte
    assert pcm_from_wav(plain[:36] + extra + plain[36:]) == source


def test_stereo_wav_is_mixed_down_to_mono() -> None:
    # Left and right frame by frame: (1000, 3000), (-2000, -4000), and a frame cut short.
    frames = struct.pack("<4h", 1000, 3000, -2000, -4000) + b"\x01\x00"
    assert pcm_from_wav(wav_bytes(Pcm(frames, 8000), channels=2)) == Pcm(
        struct.pack("<2h", 2000, -3000), 8000
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFX\x00\x00\x00\x00WAVE",
        wav_bytes(Pcm(bytes(900), 16000), channels=9),
        wav_bytes(Pcm(bytes(400), 16000))[:36],
        b"RIFF\x00\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00",
        b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00",
    ],
    ids=["empty", "not-riff", "nine-channels", "no-data", "data-first", "short-fmt"],
)
def test_unusable_wav_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="WAV|RIFF|chunk"):
        pcm_from_wav(data)
