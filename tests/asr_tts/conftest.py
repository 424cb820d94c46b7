"""Fixtures of the speech tests: espeak-ng speech made offline."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from asr_tts.codec import pcm_from_wav, resample

Speak = Callable[..., bytes]


@pytest.fixture(scope="module")
def speak() -> Speak:
    """espeak-ng speech as 16 kHz s16le, cached per module."""
    cache: dict[tuple[str, str], bytes] = {}

    def say(text: str, voice: str = "en") -> bytes:
        if (text, voice) not in cache:
            wav = subprocess.run(
                ["espeak-ng", "--stdout", "-s", "140", "-v", voice, text],
                capture_output=True,
                check=True,
            ).stdout
            cache[text, voice] = resample(pcm_from_wav(wav), 16000).samples
        return cache[text, voice]

    return say
