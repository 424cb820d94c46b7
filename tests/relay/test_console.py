"""The browser console (`/console`): served only when enabled, and, end to end in headless
Chromium with a fake microphone, a virtual device that speaks, hears and passes payloads
through (docs/protocol.md §1.1 query handshake, §1.2 PCM hello, §1.3 listen, §1.5 tts)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page

from relay.config.load import load
from relay.http.console import CSP
from tests.relay.chromium import chromium, microphone_wav, needs_chromium
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness
from tests.relay.mcp_device import MCP_HELLO, McpDevice
from tests.relay.voice_helpers import chat_msgs

PHRASE = "turn on the light"
WAV_RATE = 48000
LEAD_S, TAIL_S = 0.4, 0.8  # silence around the phrase in the fake microphone's file

# ---- serving ------------------------------------------------------------------------------


async def test_console_is_off_by_default(make_relay: RelayFactory) -> None:
    client = await make_relay()
    for path in ("/console", "/console/console.js", "/console/console-worklet.js"):
        assert (await client.get(path)).status == 404, path


async def test_console_page_and_assets_are_served_when_enabled(make_relay: RelayFactory) -> None:
    client = await make_relay(console={"enabled": True})
    resp = await client.get("/console")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP  # no inline script: injected markup cannot run
    html = await resp.text()
    assert '<script src="console/console.js"' in html
    assert "<script>" not in html  # no inline script
    assert "://" not in html  # self-contained: no CDN, nothing from elsewhere
    for name, ctype in (
        ("console.js", "text/javascript"),
        ("console-worklet.js", "text/javascript"),
        ("console.css", "text/css"),
    ):
        asset = await client.get(f"/console/{name}")
        assert asset.status == 200, name
        assert asset.content_type == ctype
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    redirect = await client.get("/console/", allow_redirects=False)
    assert (redirect.status, redirect.headers["Location"]) == (302, "/console")


def test_console_flag_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[console]\nenabled = true\n")
    assert load(path, env={}).console.enabled
    assert not load(None, env={}).console.enabled
    assert load(None, env={"RELAY__CONSOLE__ENABLED": "true"}).console.enabled


# ---- end to end in Chromium ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The fake microphone's file: silence, the phrase (espeak-ng), silence; and its length."""
    path = tmp_path_factory.mktemp("console") / "turn_on_the_light.wav"
    return path, microphone_wav(path, PHRASE, WAV_RATE, LEAD_S, TAIL_S)


@pytest.fixture
async def browser(spoken_wav: tuple[Path, float]) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, whose microphone plays `spoken_wav` once."""
    wav, _seconds = spoken_wav
    async with chromium(
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ) as b:
        yield b


async def log_entries(page: Page, direction: str = "in") -> list[dict[str, Any]]:
    """The messages the page logged in `direction`, parsed back from what it displays."""
    bodies: list[str] = await page.eval_on_selector_all(
        f'#log li[data-dir="{direction}"] .body', "els => els.map(e => e.textContent)"
    )
    return [orjson.loads(b) for b in bodies]


async def wait_logged(page: Page, kind: str, count: int = 1, timeout_s: float = 15.0) -> None:
    """Wait until `count` received messages show `kind` (e.g. "tts stop") in the log."""
    await page.wait_for_function(
        """([kind, count]) => [...document.querySelectorAll('#log li[data-dir="in"] .kind')]
             .filter(e => e.textContent === kind).length >= count""",
        arg=[kind, count],
        timeout=timeout_s * 1000,
    )


async def count_logged(page: Page, kind: str) -> int:
    """How many received messages show `kind` in the log now."""
    n: int = await page.evaluate(
        """(kind) => [...document.querySelectorAll('#log li[data-dir="in"] .kind')]
             .filter(e => e.textContent === kind).length""",
        kind,
    )
    return n


async def counter(page: Page, element_id: str) -> int:
    return int(await page.inner_text(f"#{element_id}"))


async def connect(
    browser: Browser, client: TestClient[Any, Any], *, version: str = "1", codec: str = "pcm"
) -> tuple[Page, dict[str, Any], list[str]]:
    """Open the console, connect as the test device; the page, the relay's hello, page errors."""
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(client.make_url("/console")))
    # The default relay URL is this origin's device endpoint (§1.1).
    default_url = str(client.make_url("/xiaozhi/v1/")).replace("http://", "ws://")
    assert await page.input_value("#url") == default_url
    await page.fill("#device-id", "66:9C:4B:DA:13:EA")
    await page.select_option("#version", version)
    await page.select_option("#codec", codec)
    await page.click("#connect")
    await page.wait_for_function("() => document.querySelector('#session-id').textContent !== '–'")
    hello = (await log_entries(page))[0]
    assert hello["type"] == "hello"
    return page, hello, errors


@needs_chromium
async def test_console_is_a_device_that_speaks_and_hears(  # noqa: PLR0915 - one browser, in order
    make_relay: RelayFactory,
    fake: FakeBusiness,
    browser: Browser,
    spoken_wav: tuple[Path, float],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    client = await make_relay(console={"enabled": True}, asr={"grammar_words": [PHRASE]})
    page, hello, errors = await connect(browser, client)
    assert hello["audio_params"]["format"] == "pcm"  # §1.2: a PCM hello gets PCM downlink
    assert hello["audio_params"]["sample_rate"] == 16000
    sent_hello = (await log_entries(page, "out"))[0]
    assert sent_hello["audio_params"]["frame_duration"] == 60

    # Push-to-talk (manual): press, let the microphone play the whole file, release.
    await page.select_option("#mode", "manual")
    await page.click("#listen-start")
    _wav, seconds = spoken_wav
    frames = math.ceil(seconds / 0.06)
    await page.wait_for_function(
        f"() => Number(document.querySelector('#frames-out').textContent) >= {frames}",
        timeout=10_000,
    )
    await page.click("#listen-stop")
    await wait_logged(page, "tts stop")
    received = await log_entries(page)
    stt = [m for m in received if m["type"] == "stt"]
    assert [m["text"] for m in stt] == [PHRASE]
    states = [m.get("state") for m in received if m["type"] == "tts"]
    assert states[0] == "start", states
    assert states[-1] == "stop", states
    assert "sentence_start" in states
    assert not received[-1].get("is_aborted")
    answer_frames = await counter(page, "frames-in")
    assert answer_frames >= 10  # "Echo turn on the light." is over a second of audio
    assert await counter(page, "scheduled-ms") == 60 * answer_frames  # all handed to playback
    assert chat_msgs(fake.bodies) == [PHRASE]
    assert "Device" in await page.inner_text("#transcript")

    # Custom payload round trip, with markup that must stay text (no innerHTML).
    trap = "<img src=x onerror=window.__pwned=1>"
    payload = {"auth": {"device_id": "669C4BDA13EA"}, "type": "report", "details": {"note": trap}}
    await page.fill("#custom-payload", json.dumps(payload))
    ends_before = await count_logged(page, "custom message_end")  # the chat turn's own
    await page.click("#custom-send")
    await wait_logged(page, "custom message_end", count=ends_before + 1)
    envelopes = [
        m["payload"]
        for m in await log_entries(page)
        if m["type"] == "custom" and m["payload"]["original_request_type"] == "report"
    ]
    events = [e["business_response"]["event"] for e in envelopes]
    assert events == ["message", "message_end"]
    echo = envelopes[0]["business_response"]["details"]["echo"]
    assert echo["details"]["note"] == trap
    assert echo["details"]["session_id"] == hello["session_id"]  # filled in by the console
    assert await page.locator("#log img").count() == 0
    assert await page.evaluate("() => window.__pwned === undefined")
    assert trap in await page.inner_text("#log")

    # "Speak text": listen detect with text_response is spoken by the relay (§1.3).
    await page.fill("#speak-text", "Lights are on.")
    await page.click("#speak-send")
    await wait_logged(page, "tts stop", count=2)
    assert await counter(page, "frames-in") > answer_frames

    # Push through the HTTP API to this very device (loopback: no API token needed).
    await page.fill("#push-body", '{"command": {"event": "message", "type": "command"}}')
    await page.click("#push-send")
    await page.wait_for_function("() => document.querySelector('#push-result').textContent !== '…'")
    status, _, body = (await page.inner_text("#push-result")).partition(" ")
    assert (status, orjson.loads(body)["delivered"]) == ("200", True)
    await wait_logged(page, "custom message", count=2)  # echo, then push
    pushed = [m for m in await log_entries(page) if m["type"] == "custom"][-1]
    assert pushed["payload"]["original_request_type"] == "push"

    shot = tmp_path / "console.png"
    await page.screenshot(path=str(shot), full_page=True)
    if target := os.environ.get("RELAY_CONSOLE_SCREENSHOT"):  # to look at it by hand
        shutil.copy(shot, target)
    assert shot.stat().st_size > 10_000
    await page.click("#disconnect")
    await page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'closed'"
    )
    # Reconnecting gives a new session, and the microphone opens again.
    await page.click("#connect")
    await page.wait_for_function(
        "sid => !['–', sid].includes(document.querySelector('#session-id').textContent)",
        arg=hello["session_id"],
    )
    await page.click("#listen-start")
    await page.wait_for_function("() => document.querySelector('#frames-out').textContent > 0")
    assert errors == []
    assert time.monotonic() - started < 60


@needs_chromium
async def test_console_opus_framing_v3_auto_mode(
    make_relay: RelayFactory, fake: FakeBusiness, browser: Browser
) -> None:
    client = await make_relay(console={"enabled": True}, asr={"grammar_words": [PHRASE]})
    probe = await browser.new_page()
    await probe.goto(str(client.make_url("/console")))  # WebCodecs needs a secure context
    supported = await probe.evaluate(
        """async () => typeof AudioEncoder === "function" && (await AudioEncoder.isConfigSupported(
             {codec: "opus", sampleRate: 16000, numberOfChannels: 1})).supported"""
    )
    await probe.close()
    if not supported:
        pytest.skip("this Chromium has no WebCodecs Opus encoder (the PCM test covers voice)")
    page, hello, errors = await connect(browser, client, version="3", codec="opus")
    assert hello["audio_params"]["format"] == "opus"  # the relay's own downlink (§1.2)
    # Auto mode: no button release; the relay's VAD ends the utterance (§1.3).
    await page.select_option("#mode", "auto")
    await page.click("#listen-start")
    await wait_logged(page, "tts stop")
    stt = [m["text"] for m in await log_entries(page) if m["type"] == "stt"]
    assert stt == [PHRASE]
    assert chat_msgs(fake.bodies) == [PHRASE]
    frames = await counter(page, "frames-in")
    assert frames >= 10
    # Every Opus packet decoded by WebCodecs and handed to playback (60 ms each).
    await page.wait_for_function(
        f"() => Number(document.querySelector('#scheduled-ms').textContent) >= {60 * frames}"
    )
    # Back to listening once the answer has played, as the firmware does in auto mode.
    await page.wait_for_function(
        """() => [...document.querySelectorAll('#log li[data-dir="out"] .kind')]
             .filter(e => e.textContent === "listen start").length >= 2""",
        timeout=5000,
    )
    assert errors == []


@needs_chromium
async def test_console_lists_and_calls_a_devices_tools(
    browser: Browser, make_relay: RelayFactory
) -> None:
    client = await make_relay(console={"enabled": True})
    emu = McpDevice(await Device.connect(client, device_id="0A0B0C0D0E0F", hello=MCP_HELLO))
    emu.start()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(client.make_url("/console")))
    await page.fill("#tools-device", "0A:0B:0C:0D:0E:0F")
    for _ in range(50):  # the device lists its tools right after its hello
        await page.click("#tools-list")
        await page.wait_for_function(
            "() => document.querySelector('#tools-result').textContent !== '…'"
        )
        if (await page.inner_text("#tools-result")).startswith("200"):
            break
        await asyncio.sleep(0.1)
    options = await page.eval_on_selector_all("#tools-name option", "els => els.map(e => e.value)")
    assert options == [t.name for t in emu.tools]
    await page.select_option("#tools-name", "self.audio_speaker.set_volume")
    await page.fill("#tools-args", '{"volume": 42}')
    await page.click("#tools-call")
    await page.wait_for_function(
        "() => document.querySelector('#tools-result').textContent !== '…'"
    )
    status, _, body = (await page.inner_text("#tools-result")).partition(" ")
    assert status == "200", body
    assert orjson.loads(body)["result"]["content"] == [{"type": "text", "text": "true"}]
    assert emu.volume == 42
    assert errors == []
