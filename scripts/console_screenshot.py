"""Write docs/images/console.png: the browser console (`/console`) after a real turn.

A relay with the console on and the reference business (examples/business_service.py) run in
this process on free loopback ports; Debian's Chromium (headless, never a downloaded one)
opens the console with a fake microphone that says the phrase (espeak-ng), connects as a
device, speaks one turn in push-to-talk mode, sends a `get` payload, pushes a sentence
through the HTTP API, and lists and calls the tools of a second device, one that serves the
firmware's MCP tools (devsim's tool server); then the page is photographed. pocketsphinx,
held to the phrase's words, hears it, so no model is loaded and every run gives the same
picture but for times and session ids. Run after changing the console's look; the README
shows the file.

    python -m scripts.console_screenshot [--out docs/images/console.png]   (from the root)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Page, async_playwright

from aioutil import cancel_and_wait
from asr_tts.codec import pcm_from_wav, resample
from devsim.mcp import DeviceState, ToolServer, firmware_tools
from examples import business_service
from relay.app import make_app
from relay.config.load import parse

ROOT = Path(__file__).resolve().parents[1]
OUT_PATH = ROOT / "docs" / "images" / "console.png"
CHROMIUM = Path("/usr/bin/chromium")
PHRASE = "what time is it"
DEVICE_ID = "66:9C:4B:DA:13:EA"
TOOL_DEVICE_ID = "A4:CF:12:0B:7E:31"
TOOL_VOLUME = 60
MIC_RATE = 48000
VIEWPORT = {"width": 1280, "height": 1100}
STEP_TIMEOUT_MS = 20_000
GET_PAYLOAD = {
    "auth": {"device_id": "669C4BDA13EA"},
    "type": "get",
    "details": {"events": ["getCurrentTime", "getBatteryLevel"]},
}


def microphone_wav(path: Path, phrase: str) -> float:
    """Write what the fake microphone plays: 0.4 s of silence, `phrase` spoken by espeak-ng,
    0.8 s of silence, mono 16-bit at MIC_RATE; its length in seconds."""
    raw = subprocess.run(
        ["espeak-ng", "--stdout", "-s", "150", "-v", "en-us", phrase],
        capture_output=True,
        check=True,
    ).stdout
    speech = resample(pcm_from_wav(raw), MIC_RATE).samples
    pcm = bytes(2 * int(0.4 * MIC_RATE)) + speech + bytes(2 * int(0.8 * MIC_RATE))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(pcm)
    return len(pcm) / 2 / MIC_RATE


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


def relay_config(business_url: str) -> dict[str, Any]:
    """The relay: console on, the reference business, espeak-ng speaking, pocketsphinx held to
    the phrase's words."""
    return {
        "console": {"enabled": True},
        "tts": {"provider": "espeak"},
        "asr": {"provider": "pocketsphinx", "grammar_words": [PHRASE]},
        "business": [{"name": "reference", "url": f"{business_url}/chat"}],
        "redis": {"node_id": "relay-1"},  # not the host's name in the picture
    }


async def answer_tools(ws: aiohttp.ClientWebSocketResponse, session_id: str) -> DeviceState:
    """Answer the relay's MCP requests on `ws` as the firmware does, until it closes."""
    state = DeviceState()
    server = ToolServer(firmware_tools(state))
    sid = json.dumps(session_id).encode()
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        obj = json.loads(msg.data)
        if obj.get("type") == "mcp" and (reply := server.handle(obj.get("payload"))) is not None:
            await ws.send_str(
                (b'{"session_id":%b,"type":"mcp","payload":%b}' % (sid, reply)).decode()
            )
    return state


@asynccontextmanager
async def tool_device(relay_url: str) -> AsyncIterator[None]:
    """A second device, connected while in the block, that serves the firmware's tools."""
    headers = {"Device-Id": TOOL_DEVICE_ID, "Client-Id": "tools-1", "Protocol-Version": "1"}
    hello = {
        "type": "hello",
        "version": 1,
        "transport": "websocket",
        "features": {"mcp": True},
        "audio_params": {
            "format": "opus",
            "sample_rate": 16000,
            "channels": 1,
            "frame_duration": 60,
        },
    }
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{relay_url}/xiaozhi/v1/", headers=headers) as ws,
    ):
        await ws.send_str(json.dumps(hello))
        reply = await ws.receive_json(timeout=10)
        task = asyncio.create_task(answer_tools(ws, reply["session_id"]))
        try:
            yield
        finally:
            await cancel_and_wait(task)


async def received(page: Page, kind: str, count: int = 1) -> None:
    """Wait until the log shows `count` received messages of `kind` (e.g. "tts stop")."""
    await page.wait_for_function(
        """([kind, count]) => [...document.querySelectorAll('#log li[data-dir="in"] .kind')]
             .filter(e => e.textContent === kind).length >= count""",
        arg=[kind, count],
        timeout=STEP_TIMEOUT_MS,
    )


async def one_turn(page: Page, relay_url: str, mic_seconds: float) -> None:
    """Connect as a device, speak the phrase push-to-talk, then a payload and a push."""
    await page.goto(f"{relay_url}/console")
    await page.fill("#device-id", DEVICE_ID)
    await page.click("#connect")
    await page.wait_for_function("() => document.querySelector('#session-id').textContent !== '–'")
    await page.click("#listen-start")
    frames = int(mic_seconds / 0.06) + 1
    await page.wait_for_function(
        f"() => Number(document.querySelector('#frames-out').textContent) >= {frames}",
        timeout=STEP_TIMEOUT_MS,
    )
    await page.click("#listen-stop")
    await received(page, "tts stop")
    await page.fill("#custom-payload", json.dumps(GET_PAYLOAD))
    await page.click("#custom-send")
    await received(page, "custom message_end", 2)  # the chat's, then the get's
    await page.fill("#push-body", '{"speak": "Dinner is ready."}')
    await page.click("#push-send")
    await received(page, "tts stop", 2)


async def call_a_tool(page: Page) -> None:
    """List the tool device's tools (it lists them right after its hello) and set its volume."""
    await page.fill("#tools-device", TOOL_DEVICE_ID)
    for _ in range(100):
        await page.click("#tools-list")
        await page.wait_for_function(
            "() => document.querySelector('#tools-result').textContent !== '…'"
        )
        if (await page.inner_text("#tools-result")).startswith("200"):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the tool device's tools were never listed")
    await page.select_option("#tools-name", "self.audio_speaker.set_volume")
    await page.fill("#tools-args", json.dumps({"volume": TOOL_VOLUME}))
    await page.click("#tools-call")
    await page.wait_for_function(
        "() => document.querySelector('#tools-result').textContent !== '…'"
    )
    result = await page.inner_text("#tools-result")
    if not result.startswith("200"):
        raise RuntimeError(f"the tool call failed: {result}")


async def screenshot(out: Path) -> None:
    """Run the relay and the business, drive the console, write the picture to `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "microphone.wav"
        mic_seconds = microphone_wav(wav, PHRASE)
        async with (
            serving(business_service.make_app()) as business_url,
            serving(make_app(parse(relay_config(business_url)))) as relay_url,
            tool_device(relay_url),
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--autoplay-policy=no-user-gesture-required",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}%noloop",
                ],
            )
            try:
                page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await one_turn(page, relay_url, mic_seconds)
                await call_a_tool(page)
                if errors:
                    raise RuntimeError(f"the console reported errors: {errors}")
                out.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(out), full_page=True)
            finally:
                await browser.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the options and write the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="where the PNG goes")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is absent: apt-get install chromium")
    asyncio.run(screenshot(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
