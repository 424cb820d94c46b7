"""Silero VAD over onnxruntime: speech scores high, silence and noise low, streaming is exact."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import numpy.typing as npt
import pytest

from asr_tts.codec import pcm_from_wav, resample
from asr_tts.vad import SileroModel, VadStream

RATE = 16000
WINDOW_BYTES = 2 * VadStream.WINDOW_SAMPLES
SENTENCE = "Hello, this is a test of the voice relay. The weather is nice today, let us go outside."


@pytest.fixture(scope="module")
def model() -> SileroModel:
    """The bundled model, loaded once for the module as the relay loads it once per process."""
    return SileroModel()


@pytest.fixture(scope="module")
def speech() -> bytes:
    """Two spoken sentences from espeak-ng, resampled 22050 -> 16000 Hz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip(
            "!!! espeak-ng is NOT installed: the VAD cannot be checked against real speech "
            "(apt-get install espeak-ng) !!!"
        )
    wav = subprocess.run(
        ["espeak-ng", "--stdout", SENTENCE], capture_output=True, check=True, timeout=30
    ).stdout
    return resample(pcm_from_wav(wav), RATE).samples


def noise(seconds: float, std: float, seed: int = 1) -> bytes:
    """White noise as s16le at 16 kHz."""
    x = np.random.default_rng(seed).normal(0.0, std, round(seconds * RATE))
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def window_rms(pcm: bytes) -> list[float]:
    """RMS of every whole VAD window of `pcm`."""
    n = len(pcm) // WINDOW_BYTES
    x = np.frombuffer(pcm[: n * WINDOW_BYTES], dtype="<i2").astype(np.float64)
    return [float(v) for v in np.sqrt((x.reshape(n, -1) ** 2).mean(axis=1))]


def test_bundled_model_has_the_inputs_the_stream_feeds(model: SileroModel) -> None:
    probs, state = model.run(np.zeros((3, 576), np.float32), np.zeros((2, 3, 128), np.float32))
    assert probs.shape == (3,)
    assert state.shape == (2, 3, 128)


def test_speech_scores_high_and_the_silence_around_it_low(
    model: SileroModel, speech: bytes
) -> None:
    silence = bytes(RATE * 2)  # 1 s
    probs = VadStream(model).process(silence + speech + silence)
    assert len(probs) == len(silence + speech + silence) // WINDOW_BYTES
    lead = len(silence) // WINDOW_BYTES
    voiced = [i + lead for i, r in enumerate(window_rms(speech)) if r > 1000]
    assert len(voiced) > 50
    assert max(probs) > 0.8
    assert np.mean([probs[i] for i in voiced]) > 0.7
    assert max(probs[: lead - 1]) < 0.2
    tail = lead + len(speech) // WINDOW_BYTES + 10  # the model's own hangover: ~0.3 s
    assert max(probs[tail:]) < 0.2


@pytest.mark.parametrize(
    ("name", "pcm"),
    [("digital silence", bytes(RATE * 2 * 3)), ("low white noise", noise(3.0, std=60.0))],
)
def test_silence_and_low_noise_score_low(model: SileroModel, name: str, pcm: bytes) -> None:
    probs = VadStream(model).process(pcm)
    assert len(probs) == 93
    assert max(probs) < 0.2, name


def test_odd_chunk_sizes_give_the_same_probabilities_as_one_buffer(
    model: SileroModel, speech: bytes
) -> None:
    audio = bytes(8000) + speech
    whole = VadStream(model).process(audio)
    stream = VadStream(model)
    sizes = [1, 7, 333, 1023, 1, 1025, 2, 4097, 1920, 0, 999]
    chunked: list[float] = []
    i = k = 0
    while i < len(audio):
        chunked += stream.process(audio[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    assert chunked == pytest.approx(whole, abs=1e-6)
    assert max(chunked) > 0.8


def test_leftover_samples_wait_for_the_next_call(model: SileroModel) -> None:
    stream = VadStream(model)
    assert stream.process(bytes(WINDOW_BYTES - 2)) == []
    assert len(stream.process(bytes(2))) == 1
    assert len(stream.process(bytes(1920 * 2))) == 3  # 120 ms: 3.75 windows
    assert len(stream.process(bytes(1920 * 2))) == 4


def test_interleaved_streams_keep_their_own_state(model: SileroModel, speech: bytes) -> None:
    other = noise(len(speech) / 2 / RATE, std=3000.0, seed=5)
    alone_a = VadStream(model).process(speech)
    alone_b = VadStream(model).process(other)
    a, b = VadStream(model), VadStream(model)
    got_a: list[float] = []
    got_b: list[float] = []
    for i in range(0, len(speech), 1920):
        got_a += a.process(speech[i : i + 1920])
        got_b += b.process(other[i : i + 1920])
    assert got_a == pytest.approx(alone_a, abs=1e-6)
    assert got_b == pytest.approx(alone_b, abs=1e-6)
    assert max(abs(x - y) for x, y in zip(alone_a, alone_b, strict=False)) > 0.5


def test_reset_forgets_the_state(model: SileroModel, speech: bytes) -> None:
    stream = VadStream(model)
    first = stream.process(speech)
    stream.process(speech[:1001])
    stream.reset()
    assert stream.process(speech) == pytest.approx(first, abs=1e-6)


def test_batched_streams_match_separate_streams(model: SileroModel, speech: bytes) -> None:
    inputs = [speech, noise(2.0, std=2000.0), bytes(1000), speech[5000:]]
    alone = [VadStream(model).process(pcm) for pcm in inputs]
    streams = [VadStream(model) for _ in inputs]
    got: list[list[float]] = [[] for _ in inputs]
    for offset in range(0, max(map(len, inputs)), 3000):  # uneven window counts per call
        chunks = [pcm[offset : offset + 3000] for pcm in inputs]
        for acc, probs in zip(got, VadStream.process_many(streams, chunks), strict=True):
            acc += probs
    for g, a in zip(got, alone, strict=True):
        assert g == pytest.approx(a, abs=1e-4)
    assert got[2] == []


def test_batched_streams_refuse_mismatched_arguments(model: SileroModel) -> None:
    s = VadStream(model)
    assert VadStream.process_many([], []) == []
    with pytest.raises(ValueError, match="one chunk per stream"):
        VadStream.process_many([s], [])
    with pytest.raises(ValueError, match="once"):
        VadStream.process_many([s, s], [b"", b""])
    with pytest.raises(ValueError, match="share one model"):
        VadStream.process_many([s, VadStream(SileroModel())], [b"", b""])


class RecordingModel(SileroModel):
    """The real model, keeping a copy of every batch of windows it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[npt.NDArray[np.float32]] = []

    def run(
        self, windows: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Record the windows, then run the model."""
        self.windows.append(windows.copy())
        return super().run(windows, state)


def test_the_model_sees_scaled_samples_after_the_previous_windows_tail() -> None:
    model = RecordingModel()
    x = np.arange(-1500, 1500, dtype="<i2") * 20  # 3000 samples, +-30000
    stream = VadStream(model)
    stream.process(x[:700].tobytes())
    stream.process(x[700:].tobytes())
    seen = np.concatenate(model.windows)
    assert seen.shape == (5, 64 + 512)
    scaled = x.astype(np.float32) / 32768.0
    assert seen[0, :64].tolist() == [0.0] * 64  # nothing before the first window
    for k, window in enumerate(seen):
        start = k * 512
        assert window[64:].tolist() == scaled[start : start + 512].tolist()
        if k:
            assert window[:64].tolist() == scaled[start - 64 : start].tolist()
