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

GPL_MODULES = ("phonemizer", "espeakng_loader", "spacy")


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


async def test_a_killed_worker_is_replaced(kokoro: KokoroTTS) -> None:
    await kokoro.synthesize("好。", Voice())
    (pid,) = kokoro.worker_pids()
    os.kill(pid, signal.SIGKILL)
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


async def test_a_load_outlasting_the_timeout_goes_on_for_the_next_call() -> None:
    # On a busy machine the load (~1 s) can take longer than timeout_s: the call that waited
    # fails, the load goes on, and the next call speaks on that worker. Killed, every call
    # would start a new load and kill it in turn.
    tts = KokoroTTS(pool_size=1, threads=1, timeout_s=0.01)
    try:
        with pytest.raises(TTSError, match="still loading"):
            await tts.synthesize("好。", Voice())
        (loading,) = tts._workers
        (pid,) = tts.worker_pids()
        async with asyncio.timeout(300):  # not measured: ~1 s quiet, a minute at load 15
            await asyncio.wrap_future(loading.loaded)
        tts.timeout_s = 120
        assert (await tts.synthesize("好。", Voice())).duration_s > 0.2
        assert tts.worker_pids() == [pid]
    finally:
        tts.close()
