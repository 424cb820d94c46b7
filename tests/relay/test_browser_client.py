"""A browser client on another origin, end to end in headless Chromium, behaving as the
xiaozhi-server web client does (docs/protocol.md §1.3, §1.8): it fetches the OTA check
across origins (a CORS preflight: it sends Device-Id and Client-Id headers), opens the
WebSocket with its identity in the query, sends `listen start` (auto) ONCE and keeps its
microphone open, answers included; then it types text. The relay must answer two spoken
turns in a row, not hear its own answers, and answer the typed text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser

from tests.relay.chromium import chromium, microphone_wav, needs_chromium
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import FakeBusiness
from tests.relay.voice_helpers import chat_msgs

PHRASE = "turn on the light"
TYPED = "what time is it"
MAC = "02:AB:CD:EF:01:23"
WAV_RATE = 48000
# The microphone loops over: silence, the phrase, then silence long enough for the answer
# to be spoken and played (about 2.5 s), so each loop is one spoken turn.
LEAD_S, TAIL_S = 0.4, 5.0

PAGE = """<!doctype html>
<meta charset="utf-8"><title>web client</title>
<script>
window.__log = [];
window.__frames = 0;
window.__sent = [];
window.__errors = [];
const q = new URLSearchParams(location.search);
let ws, sessionId = "";
function send(msg) { window.__sent.push(msg); ws.send(JSON.stringify(msg)); }
window.typeText = (text) =>
  send({session_id: sessionId, type: "listen", state: "detect", text});
async function main() {
  const ota = await fetch(q.get("relay") + "/xiaozhi/ota/", {
    method: "POST",
    headers: {"Device-Id": q.get("mac"), "Client-Id": "web-client-1",
              "Content-Type": "application/json"},
    body: JSON.stringify({application: {version: "1.0.0"}}),
  });
  window.__ota = await ota.json();
  const url = window.__ota.websocket.url + "?device-id=" + encodeURIComponent(q.get("mac")) +
    "&client-id=web-client-1";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { window.__frames++; return; }
    const msg = JSON.parse(ev.data);
    window.__log.push(msg);
    if (msg.type === "hello") { sessionId = msg.session_id; startListening(); }
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  send({type: "hello", version: 1, transport: "websocket",
        audio_params: {format: "pcm", sample_rate: 16000, channels: 1, frame_duration: 60}});
}
async function startListening() {
  send({session_id: sessionId, type: "listen", state: "start", mode: "auto"});  // once
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ctx = new AudioContext({sampleRate: 16000});
  const source = ctx.createMediaStreamSource(stream);
  const proc = ctx.createScriptProcessor(1024, 1, 1);
  let pending = new Int16Array(0);
  proc.onaudioprocess = (ev) => {
    const input = ev.inputBuffer.getChannelData(0);
    const merged = new Int16Array(pending.length + input.length);
    merged.set(pending);
    for (let i = 0; i < input.length; i++) {
      merged[pending.length + i] = Math.max(-1, Math.min(1, input[i])) * 32767;
    }
    let at = 0;
    for (; at + 960 <= merged.length; at += 960) ws.send(merged.slice(at, at + 960).buffer);
    pending = merged.slice(at);
  };
  source.connect(proc);
  proc.connect(ctx.destination);
}
main().catch((e) => window.__errors.push(String(e)));
</script>
"""


@pytest.fixture(scope="module")
def looping_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "phrase_loop.wav"
    microphone_wav(path, PHRASE, WAV_RATE, LEAD_S, TAIL_S)
    return path


@pytest.fixture
async def browser(looping_wav: Path) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, whose microphone loops over `looping_wav`."""
    async with chromium(
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={looping_wav}",
    ) as b:
        yield b


async def serve_page(aiohttp_server: Any) -> str:
    """The client's page on its own origin (another port of loopback)."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


def count(log: list[dict[str, Any]], mtype: str, state: str | None = None) -> int:
    return sum(
        1 for m in log if m.get("type") == mtype and (state is None or m.get("state") == state)
    )


@needs_chromium
async def test_a_browser_client_from_another_origin_talks_turn_after_turn(
    make_relay: RelayFactory, fake: FakeBusiness, browser: Browser, aiohttp_server: Any
) -> None:
    client = await make_relay(asr={"provider": "pocketsphinx", "grammar_words": [PHRASE, TYPED]})
    relay_origin = str(client.make_url("")).rstrip("/")
    page_url = await serve_page(aiohttp_server)
    assert page_url.split("/")[2] != relay_origin.split("/")[2]  # another origin
    page = await browser.new_page()
    await page.goto(f"{page_url}?relay={relay_origin}&mac={MAC}")
    # Two spoken turns after one `listen start`.
    await page.wait_for_function(
        """() => window.__errors.length > 0 || window.__log.filter(
             m => m.type === "tts" && m.state === "stop").length >= 2""",
        timeout=30_000,
    )
    assert await page.evaluate("window.__errors") == []
    ota = await page.evaluate("window.__ota")
    assert ota["websocket"]["url"] == relay_origin.replace("http://", "ws://") + "/xiaozhi/v1/"
    await page.evaluate("(t) => window.typeText(t)", TYPED)
    await page.wait_for_function(
        """(t) => window.__log.some(m => m.type === "stt" && m.text === t) && window.__log.filter(
             m => m.type === "tts" && m.state === "stop").length >= 3""",
        arg=TYPED,
        timeout=15_000,
    )
    log: list[dict[str, Any]] = await page.evaluate("window.__log")
    sent: list[dict[str, Any]] = await page.evaluate("window.__sent")
    assert count(sent, "listen", "start") == 1
    stts = [m["text"] for m in log if m["type"] == "stt"]
    assert stts[:3] == [PHRASE, PHRASE, TYPED], stts
    stops = [m for m in log if m["type"] == "tts" and m["state"] == "stop"]
    assert [m["is_aborted"] for m in stops[:3]] == [False, False, False]
    assert chat_msgs(fake.bodies)[:3] == [PHRASE, PHRASE, TYPED]
    assert count(log, "error") == 0
    assert await page.evaluate("window.__frames") > 30  # three answers were spoken
    await page.close()
