"""The embedded Kokoro provider: real synthesis in worker processes, its files, its voices.

One provider (one worker, the model loaded once) serves the whole test session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from asr_tts.tts import kokoro_files as files
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.kokoro import KokoroTTS
from asr_tts.tts.kokoro_g2p import Phonemizer, split_runs
from asr_tts.tts.kokoro_worker import MAX_TOKENS, chunks

GPL_MODULES = ("phonemizer", "espeakng_loader", "spacy", "num2words", "misaki.en")


@pytest.fixture(scope="session")
def kokoro() -> Iterator[KokoroTTS]:
    tts = KokoroTTS(pool_size=1, threads=2, timeout_s=60)
    yield tts
    workers = list(tts._workers)
    tts.close()
    # Each worker's pool thread has ended too: one still running when the interpreter exits
    # can print a traceback (Python 3.11).
    assert workers
    assert not [w for w in workers if w.running]


def loudness(samples: bytes) -> float:
    pcm = np.frombuffer(samples, "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0


@pytest.mark.parametrize(
    ("text", "low_s", "high_s"),
    [
        ("你好，今天天气很好。", 1.0, 5.0),  # ten syllables
        ("Turn on the kitchen light.", 0.8, 4.0),
        ("WiFi密码是1234。", 1.5, 7.0),  # English, Mandarin and digits read in Mandarin
    ],
)
async def test_speech_has_a_plausible_length(
    kokoro: KokoroTTS, text: str, low_s: float, high_s: float
) -> None:
    pcm = await kokoro.synthesize(text, Voice())
    assert pcm.sample_rate == 24000
    assert low_s <= pcm.duration_s <= high_s, pcm.duration_s
    assert loudness(pcm.samples) > 300


async def test_speed_ratio_shortens_the_speech(kokoro: KokoroTTS) -> None:
    text = "Turn on the kitchen light."
    normal = await kokoro.synthesize(text, Voice())
    fast = await kokoro.synthesize(text, Voice(speed_ratio=1.6))
    assert fast.duration_s < 0.85 * normal.duration_s


async def test_an_unknown_voice_speaks_with_the_default_and_is_named(
    kokoro: KokoroTTS, caplog: pytest.LogCaptureFixture
) -> None:
    default = await kokoro.synthesize("你好。", Voice())
    with caplog.at_level(logging.WARNING):
        unknown = await kokoro.synthesize("你好。", Voice(voice_type="BV001_streaming"))
    assert unknown.samples == default.samples
    assert "BV001_streaming" in caplog.text
    blended = await kokoro.synthesize("你好。", Voice(voice_type="jf_nezumi:0.6+jm_kumo:0.4"))
    assert blended.samples != default.samples
    assert loudness(blended.samples) > 300


async def test_other_scripts_are_skipped_with_a_warning(
    kokoro: KokoroTTS, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        pcm = await kokoro.synthesize("こんにちは مرحبا", Voice())
    assert pcm.samples == b""
    assert "こんにちは" in caplog.text


async def test_a_call_whose_worker_dies_twice_is_a_tts_error(kokoro: KokoroTTS) -> None:
    # The first death is retried on a new worker; a second is a TTSError like any failure,
    # so the answer ends with `tts stop` and is counted (a raw BrokenProcessPool was not).
    with pytest.raises(TTSError, match="died twice") as info:
        await kokoro._call_twice(os._exit, 1)
    assert info.value.reason == "worker"


async def test_a_killed_worker_is_replaced_and_its_load_is_not_a_call(
    kokoro: KokoroTTS,
) -> None:
    await kokoro.synthesize("好。", Voice())
    (pid,) = kokoro.worker_pids()
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):  # the pool notices its process is gone
        while any(w.usable for w in kokoro._idle):
            await asyncio.sleep(0.01)
    # A new worker loads the model and makes its first calls (~2 s, more on a busy machine):
    # far longer than this call timeout, which a call that only lists modules keeps to.
    kokoro.timeout_s = 1.0
    try:
        in_worker = await kokoro.loaded_modules()
    finally:
        kokoro.timeout_s = 60
    assert "jieba" in in_worker  # the load warmed the Mandarin phonemiser up
    pcm = await kokoro.synthesize("Hello.", Voice())
    assert pcm.duration_s > 0.2
    replaced = kokoro.worker_pids()
    assert replaced
    assert pid not in replaced


async def test_no_gpl_phonemiser_is_imported(kokoro: KokoroTTS) -> None:
    await kokoro.synthesize("你好 hello。", Voice())
    in_worker = await kokoro.loaded_modules()
    assert "misaki.zh" in in_worker  # the Mandarin phonemiser did run there
    for name in GPL_MODULES:
        assert name not in in_worker
        assert name not in sys.modules


def test_runs_follow_the_script() -> None:
    runs, dropped = split_runs("OK好的, 打开WiFi 2次。Turn it on! こんにちは")
    assert runs == [
        ("en", "OK"),
        ("zh", "好的, 打开"),
        ("en", "WiFi 2"),
        ("zh", "次。"),
        ("en", "Turn it on!      "),
    ]
    assert dropped == "こんにちは"
    assert split_runs("😀 !!!") == ([], "")
    assert split_runs("42") == ([("en", "42")], "")


def test_english_keeps_its_clauses_and_numbers() -> None:
    phonemes = Phonemizer().english("Hello, it is 7:30.")
    assert phonemes.startswith("həlˈO, ")
    assert phonemes.endswith(".")
    assert "sˈɛvən" in phonemes


def test_long_phonemes_come_in_bounded_chunks() -> None:
    vocab = files.vocab(files.locate())
    pieces = chunks("həlˈO, wˈɜɹld. " * 200 + "a" * 1200, vocab)
    assert len(pieces) > 5
    assert all(0 < len(p) <= MAX_TOKENS for p in pieces)
    assert chunks("  ", vocab) == []
    slow = chunks("həlˈO, wˈɜɹld. " * 20, vocab, 32)
    assert all(0 < len(p) <= 32 for p in slow)


def test_blends_are_parsed() -> None:
    assert files.parse_blend("a:0.6+b:0.4") == [("a", 0.6), ("b", 0.4)]
    assert files.parse_blend("jm_kumo") == [("jm_kumo", 1.0)]
    for bad in ("a:x", "a:0+b:0", "a b", ""):
        with pytest.raises(ValueError, match="voice"):
            files.parse_blend(bad)


def corrupt_copy(tmp_path: Path, damage: str) -> files.ModelFiles:
    """The installed files with one model part damaged: "truncated" or "missing"."""
    real = files.locate()
    parts = list(real.parts)
    bad = tmp_path / "part.bin"
    if damage == "truncated":
        bad.write_bytes(parts[2].read_bytes()[:1000])
    parts[2] = bad
    voices = tmp_path / "voices.npz"
    shutil.copy(real.voices, voices)
    return files.ModelFiles(tuple(parts), real.vocab, voices)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_bad_model_part_is_named(tmp_path: Path, damage: str) -> None:
    with pytest.raises(files.ModelFileError, match=str(tmp_path / "part.bin")):
        files.check(corrupt_copy(tmp_path, damage))


def test_files_checked_before_are_hashed_again_only_once_changed(tmp_path: Path) -> None:
    # `relay serve` checks the files before it listens, then KokoroTTS checks them again:
    # the second check costs no hashing of ~95 MB while nothing changed.
    real = files.locate()
    vocab = tmp_path / "vocab.json"
    shutil.copy(real.vocab, vocab)
    copy = files.ModelFiles(real.parts, vocab, real.voices)
    files.check(copy)
    stamp = vocab.stat()
    vocab.write_bytes(b"x" * stamp.st_size)  # corrupt, same size and mtime: not read again
    os.utime(vocab, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    files.check(copy)
    os.utime(vocab, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    with pytest.raises(files.ModelFileError, match=str(vocab)):
        files.check(copy)


def test_more_voices_come_from_voices_dir(tmp_path: Path) -> None:
    real = files.locate()
    np.save(tmp_path / "zf_extra.npy", np.ones((510, 1, 256), np.float32))
    voices = files.load_voices(real, tmp_path)
    assert "zf_extra" in voices
    assert "jf_nezumi" in voices
    assert files.blend(voices, "zf_extra:1+jm_kumo:1").shape == (510, 256)
    with pytest.raises(KeyError):
        files.blend(voices, "nobody")


async def test_a_warm_up_whose_load_fails_is_logged_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The files are good when the provider is built; the worker it starts to warm up then
    # finds a damaged part first on its path (a spawned worker inherits sys.path) and fails
    # to load, long before any model would be.
    tts = KokoroTTS(pool_size=1, timeout_s=60)
    package = tmp_path / files.MODEL_PARTS[0][0]
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "part.bin").write_bytes(b"not the model")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING):
            tts.warm()
            warming = tts._warming
            tts.warm()  # once is enough
            assert warming is not None
            assert tts._warming is warming
            await asyncio.wait_for(warming, 60)
        assert "no worker loaded ahead of use" in caplog.text
        assert str(package / "part.bin") in caplog.text
        assert not tts._workers  # retired: the first answer starts a new one
    finally:
        tts.close()


async def test_a_worker_whose_load_fails_is_replaced_not_reused(tmp_path: Path) -> None:
    # Not a bad model part (that refuses at start): here a style vector of voices_dir is
    # damaged after the provider checked it, so the worker's load raises. The answer fails
    # with TTSError and the worker is retired: a worker without its model never speaks.
    np.save(tmp_path / "zf_extra.npy", np.ones((510, 1, 256), np.float32))
    tts = KokoroTTS(pool_size=1, threads=1, timeout_s=60, voices_dir=str(tmp_path))
    (tmp_path / "zf_extra.npy").write_bytes(b"not a style vector")
    try:
        with pytest.raises(TTSError, match="could not load"):
            await tts.synthesize("好。", Voice())
        assert not tts._workers
    finally:
        tts.close()
