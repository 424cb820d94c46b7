"""Debian's Chromium, headless, for the end-to-end browser tests (never a downloaded browser)."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from asr_tts.codec import pcm_from_wav, resample

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=(
        "!!! /usr/bin/chromium is absent: the browser pages are NOT tested end to end. "
        "Install it with `apt-get install chromium` (scripts/test.sh does, via "
        "RELAY_SETUP_BROWSER=1) !!!"
    ),
)
# Quiet and offline: no sandbox (containers), no GPU, nothing phoning home.
BASE_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Browser]:
    """Launch headless Chromium with `BASE_ARGS` plus `args`; closed on exit."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*BASE_ARGS, *args]
        )
        try:
            yield browser
        finally:
            await browser.close()


def microphone_wav(path: Path, phrase: str, rate: int, lead_s: float, tail_s: float) -> float:
    """Write a fake microphone's file: `lead_s` of silence, `phrase` spoken by espeak-ng,
    `tail_s` of silence, mono 16-bit at `rate`; its length in seconds."""
    raw = subprocess.run(
        ["espeak-ng", "--stdout", "-s", "150", "-v", "en-us", phrase],
        capture_output=True,
        check=True,
    ).stdout
    speech = resample(pcm_from_wav(raw), rate).samples
    pcm = bytes(2 * int(lead_s * rate)) + speech + bytes(2 * int(tail_s * rate))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return len(pcm) / 2 / rate
