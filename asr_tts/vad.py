"""Silero VAD (v6, ONNX) on onnxruntime: 16 kHz s16le in, one speech probability per 32 ms out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import onnxruntime

F32 = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
_CONTEXT = 64  # the wrapper upstream prepends the previous window's last 64 samples
_STATE_SHAPE = (2, 1, 128)  # LSTM (h, c) x batch x hidden
_BUNDLED = Path(__file__).parent / "models" / "silero_vad.onnx"


class SileroModel:
    """The Silero VAD ONNX session: one per process, shared by all streams (run is thread-safe)."""

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle pool threads must sleep, not spin: the relay's event loop shares these cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # the model's unused initializers are harmless noise
        self._session = onnxruntime.InferenceSession(
            str(path if path is not None else _BUNDLED),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, windows: F32, state: F32) -> tuple[F32, F32]:
        """One step for B streams: windows [B, 64+512], state [2, B, 128] -> (probs [B], state)."""
        out, new_state = self._session.run(
            ["output", "stateN"], {"input": windows, "state": state, "sr": self._sr}
        )
        return np.asarray(out, dtype=np.float32)[:, 0], np.asarray(new_state, dtype=np.float32)


class VadStream:
    """One audio stream's VAD state (not thread-safe): 16 kHz s16le in, a probability per window."""

    WINDOW_SAMPLES: ClassVar[int] = 512
    WINDOW_S: ClassVar[float] = WINDOW_SAMPLES / SAMPLE_RATE

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._pending = bytearray()
        self._state: F32 = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context: F32 = np.zeros(_CONTEXT, dtype=np.float32)

    def reset(self) -> None:
        """Forget all audio and the model state, as for a new utterance stream."""
        self._pending.clear()
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def _take_windows(self, pcm16k: bytes) -> list[F32]:
        """Buffer `pcm16k`; return the windows now complete, each [1, 576] with its context."""
        self._pending += pcm16k
        n = len(self._pending) // (2 * self.WINDOW_SAMPLES)
        if not n:
            return []
        signal = np.empty(_CONTEXT + n * self.WINDOW_SAMPLES, dtype=np.float32)
        signal[:_CONTEXT] = self._context
        signal[_CONTEXT:] = np.frombuffer(self._pending, dtype="<i2", count=n * self.WINDOW_SAMPLES)
        signal[_CONTEXT:] *= 1.0 / 32768.0  # the model takes floats in [-1, 1)
        del self._pending[: 2 * n * self.WINDOW_SAMPLES]  # the frombuffer view is gone by now
        self._context = signal[-_CONTEXT:]
        span = _CONTEXT + self.WINDOW_SAMPLES
        return [
            signal[None, i : i + span] for i in range(0, n * self.WINDOW_SAMPLES, span - _CONTEXT)
        ]

    def process(self, pcm16k: bytes) -> list[float]:
        """Return the speech probability of every 512-sample window completed by `pcm16k`."""
        probs: list[float] = []
        for window in self._take_windows(pcm16k):
            p, self._state = self._model.run(window, self._state)
            probs.append(float(p[0]))
        return probs

    @staticmethod
    def process_many(streams: Sequence[VadStream], chunks: Sequence[bytes]) -> list[list[float]]:
        """Feed each stream its chunk in batched model calls; results as process() per stream."""
        if len(streams) != len(chunks):
            raise ValueError("one chunk per stream")
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear once per call")
        if not streams:
            return []
        model = streams[0]._model
        if any(s._model is not model for s in streams):
            raise ValueError("batched streams must share one model")
        windows = [s._take_windows(c) for s, c in zip(streams, chunks, strict=True)]
        results: list[list[float]] = [[] for _ in streams]
        # Step k batches the k-th window of every stream that has one: a stream's windows
        # depend on each other through the state, different streams' windows do not.
        for k in range(max(len(w) for w in windows)):
            idx = [i for i, w in enumerate(windows) if len(w) > k]
            batch = np.concatenate([windows[i][k] for i in idx])
            state = np.concatenate([streams[i]._state for i in idx], axis=1)
            probs, state = model.run(batch, state)
            # Each stream keeps a view of its column: no copy, and the next concatenate
            # gathers from views as fast as from contiguous arrays.
            for j, (i, p) in enumerate(zip(idx, probs.tolist(), strict=True)):
                streams[i]._state = state[:, j : j + 1]
                results[i].append(p)
        return results
