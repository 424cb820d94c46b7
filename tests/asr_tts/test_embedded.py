"""The embedded espeak-ng provider: real speech, and every way the subprocess can go wrong."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice
from asr_tts.tts.espeak import MANDARIN_VOICE, EmbeddedTTS

# A stand-in for espeak-ng that logs its arguments, then prints a short WAV.
FAKE_ESPEAK = """#!{python}
import io, json, os, sys, time, wave
log = {log!r}
if "--voices" in sys.argv:
    with open(log, "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:]}}) + "\\n")
    print("Pty Language       Age/Gender VoiceName          File                 Other Languages")
    print(" 2  en-us           --/M      English_(America)  gmw/en-US            (en 3)")
    print(" 5  de              --/M      German             gmw/de")
    print(" 5  xx-mb           --/M      mbrola-voice       mb/mb-xx")
    sys.exit(0)
with open(log, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "start": os.getpid()}}) + "\\n")
time.sleep({sleep})
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(22050)
    w.writeframes(b"\\x10\\x00" * 2205)
with open(log, "a") as f:
    f.write(json.dumps({{"end": os.getpid()}}) + "\\n")
sys.stdout.buffer.write(buf.getvalue())
"""


def rms(pcm: Pcm) -> float:
    """Root mean square of the samples."""
    x = np.frombuffer(pcm.samples, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def script(path: Path, body: str) -> str:
    """Write an executable script and return its path."""
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def gone(pid: int) -> bool:
    """True when the process no longer exists, not even as a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Fake:
    """The fake espeak-ng and what it logged."""

    def __init__(self, tmp_path: Path, sleep: float = 0.0) -> None:
        self.log = tmp_path / "calls.jsonl"
        self.binary = script(
            tmp_path / "fake-espeak",
            FAKE_ESPEAK.format(python=sys.executable, log=str(self.log), sleep=sleep),
        )

    def entries(self) -> list[dict[str, Any]]:
        """Every line the fake logged, in order."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines]

    def syntheses(self) -> list[list[str]]:
        """The argv of each synthesis call."""
        return [e["argv"] for e in self.entries() if "start" in e]


async def test_english_is_spoken() -> None:
    pcm = await EmbeddedTTS().synthesize("Hello world, this is a test.", Voice())
    assert pcm.sample_rate == 22050
    assert pcm.duration_s > 1.0
    assert rms(pcm) > 500


async def test_mandarin_is_spoken() -> None:
    pcm = await EmbeddedTTS().synthesize("你好，世界。今天天气很好。", Voice())
    assert pcm.duration_s > 1.0
    assert rms(pcm) > 500


async def test_text_starting_with_a_dash_is_spoken_not_parsed() -> None:
    # Taken for options, "--help" would print usage instead of a WAV.
    pcm = await EmbeddedTTS().synthesize("--help -v minus", Voice())
    assert pcm.duration_s > 0.5
    assert rms(pcm) > 500


async def test_speed_ratio_changes_the_length() -> None:
    tts = EmbeddedTTS()
    normal = await tts.synthesize("One two three four five six.", Voice())
    fast = await tts.synthesize("One two three four five six.", Voice(speed_ratio=2.0))
    assert fast.duration_s < normal.duration_s * 0.75


async def test_arguments(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    pcm = await EmbeddedTTS(binary=fake.binary).synthesize(
        "-v x", Voice(speed_ratio=2.0, pitch_ratio=0.5)
    )
    assert pcm == Pcm(b"\x10\x00" * 2205, 22050)
    assert fake.syntheses() == [["--stdout", "-b1", "-ven", "-s350", "-p25", "--", "-v x"]]


@pytest.mark.parametrize(
    ("speed", "pitch", "expected"),
    [
        (10.0, 3.0, ["-s450", "-p99"]),
        (0.1, -1.0, ["-s80", "-p0"]),
        (math.nan, math.inf, ["-s175", "-p50"]),
    ],
)
async def test_speed_and_pitch_are_clamped(
    tmp_path: Path, speed: float, pitch: float, expected: list[str]
) -> None:
    fake = Fake(tmp_path)
    await EmbeddedTTS(binary=fake.binary).synthesize(
        "hi", Voice(speed_ratio=speed, pitch_ratio=pitch)
    )
    assert fake.syntheses()[0][3:5] == expected


async def test_mandarin_goes_through_pinyin(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    await EmbeddedTTS(binary=fake.binary).synthesize(
        "你好吗，世界！OK 2024", Voice(voice_type="de")
    )
    (argv,) = fake.syntheses()
    assert argv[2] == f"-v{MANDARIN_VOICE}"
    assert argv[-2:] == ["--", "ni3 hao3 ma5, shi4 jie4! OK 2024"]


async def test_voice_type_is_used_only_when_installed(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    tts = EmbeddedTTS(binary=fake.binary, default_voice="en-gb")
    for voice_type in ["en-US", "BV051_streaming", "xx-mb", None, "de"]:
        await tts.synthesize("hi", Voice(provider="embedded", voice_type=voice_type))
    voices = [argv[2] for argv in fake.syntheses()]
    assert voices == ["-ven-us", "-ven-gb", "-ven-gb", "-ven-gb", "-vde"]
    assert sum("--voices" in e.get("argv", []) for e in fake.entries()) == 1


async def test_the_voice_list_names_the_installed_voices_and_the_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = Fake(tmp_path)
    listed = await EmbeddedTTS(binary=fake.binary, default_voice="en-gb").voice_list()
    assert listed.engine == "espeak-ng"
    assert listed.voices == ("de", "en-us")  # MBROLA voices need mbrola: not listed
    assert dict(listed.defaults) == {"zh": MANDARIN_VOICE, "*": "en-gb"}
    with caplog.at_level(logging.WARNING):
        missing = await EmbeddedTTS(binary="/nonexistent").voice_list()
    assert missing.voices == ()
    assert "cannot list espeak-ng's voices: cannot run '/nonexistent'" in caplog.text


@pytest.mark.parametrize("bound", [1, 2])
async def test_concurrency_is_bounded(tmp_path: Path, bound: int) -> None:
    fake = Fake(tmp_path, sleep=0.1)
    tts = EmbeddedTTS(binary=fake.binary, max_concurrency=bound)
    await asyncio.gather(*(tts.synthesize(f"n{i}", Voice()) for i in range(3)))
    running, most = 0, 0
    for entry in fake.entries():
        running += 1 if "start" in entry else -1
        most = max(most, running)
    assert 1 <= most <= bound


async def test_missing_binary_is_a_tts_error() -> None:
    with pytest.raises(TTSError, match="cannot run '/nonexistent'") as info:
        await EmbeddedTTS(binary="/nonexistent").synthesize("hello", Voice())
    assert info.value.reason == "worker"


async def test_failure_exit_is_a_tts_error(tmp_path: Path) -> None:
    binary = script(tmp_path / "fail", "#!/bin/sh\necho 'voice broken' >&2\nexit 3\n")
    with pytest.raises(TTSError, match="status 3: voice broken") as info:
        await EmbeddedTTS(binary=binary).synthesize("hello", Voice())
    assert info.value.reason == "worker"


async def test_output_that_is_not_wav_is_a_tts_error(tmp_path: Path) -> None:
    binary = script(tmp_path / "chatty", "#!/bin/sh\necho usage: espeak-ng\n")
    with pytest.raises(TTSError, match="unusable WAV") as info:
        await EmbeddedTTS(binary=binary).synthesize("hello", Voice())
    assert info.value.reason == "worker"


def written_pid(pid_file: Path) -> int | None:
    """The pid in the file once the shell has written it whole."""
    text = pid_file.read_text() if pid_file.exists() else ""
    return int(text) if text.endswith("\n") else None


async def started(pid_file: Path) -> int:
    """The pid the hanging binary wrote; polled, since another process cannot set an Event."""
    for _ in range(500):
        if (pid := written_pid(pid_file)) is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError("the binary never started")


def hanging(tmp_path: Path) -> tuple[str, Path]:
    """A binary that records its pid and never answers."""
    pid_file = tmp_path / "pid"
    return script(tmp_path / "hang", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n"), pid_file


async def test_timeout_is_a_tts_error_and_kills_the_process(tmp_path: Path) -> None:
    binary, pid_file = hanging(tmp_path)
    with pytest.raises(TTSError, match="no result within 0.3 s") as info:
        await EmbeddedTTS(binary=binary, timeout_s=0.3).synthesize("hello", Voice())
    assert info.value.reason == "timeout"
    assert gone(int(pid_file.read_text()))


async def test_cancellation_kills_the_process(tmp_path: Path) -> None:
    binary, pid_file = hanging(tmp_path)
    task = asyncio.create_task(EmbeddedTTS(binary=binary).synthesize("hello", Voice()))
    pid = await started(pid_file)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(pid)
