"""The inside of one Kokoro worker process: an onnxruntime session, the voices, the phonemiser.

asr_tts.tts.kokoro starts each worker with the "spawn" method and calls the functions below
in it, one call at a time. The model lives in a module global: the process itself is the
resource its parent owns. Phonemes come in chunks of at most MAX_TOKENS, so one call's
memory stays bounded whatever the length of the text.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from asr_tts.tts import kokoro_files as files
from asr_tts.tts.kokoro_g2p import Phonemizer, split_runs

# The model takes up to 510 tokens, but a run's memory grows with its input (~1.7 MiB per
# token of speech at speed 1) over the ~450 MiB a loaded worker holds, and onnxruntime's arena
# keeps the most a run took: at most 40 tokens (~8 Han characters, ~6 English words) a run
# keep a worker under 600 MiB whatever the input; 64 let it reach 600 MiB, 500 over 750; with
# Kokoro's own voices (zf_xiaobei, af_heart: more audio per token than the Japanese styles'
# mean) 48 reached 603-616 MiB (docs/performance.md). A slower speed takes fewer.
MAX_TOKENS = 40
_CHUNK_BREAK = re.compile(r"(?<=[,.!?;:])\s*|\s+")
_GAP_S = 0.05  # between runs of different languages
_TRIM_LEVEL = 0.01
_PAD = int(0.03 * files.SAMPLE_RATE)
WARM_UP_TEXT = (("zh", "你好。"), ("en", "Hello."))


@dataclass
class _Engine:
    session: ort.InferenceSession
    vocab: dict[str, int]
    voices: dict[str, files.Style]
    phonemizer: Phonemizer
    styles: dict[str, files.Style] = field(default_factory=dict)  # blends already made

    def style(self, spec: str) -> files.Style:
        if spec not in self.styles:
            self.styles[spec] = files.blend(self.voices, spec)
        return self.styles[spec]


_engine: _Engine | None = None


def load(threads: int, voices_dir: str | None) -> int:
    """Load the model (joined and checked) and the voices; return the pid."""
    global _engine
    model = files.locate()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep, not spin: they share the cores with the relay's loop and the
    # recogniser's workers. Spinning cost 1.5x on a busy 2-core machine (docs/performance.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        files.model_bytes(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    extra = Path(voices_dir) if voices_dir else None
    _engine = _Engine(session, files.vocab(model), files.load_voices(model, extra), Phonemizer())
    _warm(_engine)
    return os.getpid()


def _warm(engine: _Engine) -> None:
    """Make the slow first calls now, as part of the load: jieba's dictionary (~1 s), the
    English phonemiser, onnxruntime's first run. Otherwise the first answer pays for them."""
    style = next(iter(engine.voices.values()))
    for lang, text in WARM_UP_TEXT:
        for chunk in chunks(engine.phonemizer(lang, text), engine.vocab):
            _infer(engine, chunk, style, 1.0)


def synthesize(text: str, voices: dict[str, str], speed: float) -> tuple[bytes, str]:
    """24 kHz s16le speech for `text` ({"zh": spec, "en": spec} voices) and what was dropped."""
    engine = _engine
    if engine is None:
        raise RuntimeError("the Kokoro worker is not loaded")
    runs, dropped = split_runs(text)
    audio: list[npt.NDArray[np.float32]] = []
    limit = max(16, int(MAX_TOKENS * min(1.0, speed)))
    for lang, run in runs:
        phonemes = engine.phonemizer(lang, run)
        style = engine.style(voices[lang])
        for chunk in chunks(phonemes, engine.vocab, limit):
            if audio:
                audio.append(np.zeros(int(_GAP_S * files.SAMPLE_RATE), np.float32))
            audio.append(_infer(engine, chunk, style, speed))
    if not audio:
        return b"", dropped
    pcm = np.clip(np.concatenate(audio), -1.0, 1.0) * 32767
    return pcm.astype("<i2").tobytes(), dropped


def chunks(phonemes: str, vocab: dict[str, int], limit: int = MAX_TOKENS) -> list[list[int]]:
    """Token ids in pieces of at most `limit`, cut after punctuation or at spaces."""
    out: list[list[int]] = []
    current: list[int] = []
    for piece in _CHUNK_BREAK.split(phonemes):
        tokens = [vocab[c] for c in piece + " " if c in vocab]
        if current and len(current) + len(tokens) > limit:
            out.append(current)
            current = []
        while len(tokens) > limit:  # one "word" longer than a chunk
            out.append(tokens[:limit])
            tokens = tokens[limit:]
        current += tokens
    if any(t != vocab[" "] for t in current):
        out.append(current)
    return [c for c in out if c]


def _infer(
    engine: _Engine, tokens: list[int], style: files.Style, speed: float
) -> npt.NDArray[np.float32]:
    ref = style[min(len(tokens), len(style)) - 1].reshape(1, files.STYLE_DIM)
    result = engine.session.run(
        None,
        {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": ref,
            "speed": np.array([speed], dtype=np.float32),
        },
    )
    return _trim(np.asarray(result[0], np.float32).ravel())


def _trim(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Without the near-silence at either end (kept: 30 ms)."""
    loud = np.flatnonzero(np.abs(audio) > _TRIM_LEVEL)
    if len(loud) == 0:
        return audio[:0]
    return audio[max(0, loud[0] - _PAD) : loud[-1] + _PAD]


def modules() -> list[str]:
    """The modules this worker has imported (the licence test looks for GPL ones)."""
    return sorted(sys.modules)
