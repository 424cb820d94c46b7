"""The device simulator (devsim/) against the real relay app and a fake business."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from asr_tts.tts.base import Voice
from asr_tts.tts.espeak import EmbeddedTTS
from devsim import cli as devsim
from devsim.load import device_ids, percentile
from examples import business_service
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness, open_stream, session_of, sse

ROOT = Path(__file__).resolve().parents[2]
REPORT = '{"type":"report","details":{"session_id":"$SESSION_ID","events":[{"n":1}]}}'
COMMAND = "turn on the light"


def ws_url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("/xiaozhi/v1/")).replace("http://", "ws://", 1)


async def simulate(client: TestClient[Any, Any], *args: str) -> tuple[int, str, str]:
    """Run the simulator's main coroutine against `client`'s relay: (exit code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    opts = devsim.parse_args(["--url", ws_url(client), *args])
    code = await devsim.run(opts, out, err)
    return code, out.getvalue(), err.getvalue()


def received(transcript: str) -> list[dict[str, Any]]:
    """The relay messages of a transcript: lines `[  t] < {json}`."""
    out: list[dict[str, Any]] = []
    for line in transcript.splitlines():
        _stamp, sep, rest = line.partition("] < ")
        if sep and rest.startswith("{"):
            out.append(orjson.loads(rest))
    return out


def business_event(msg: dict[str, Any]) -> str | None:
    if msg.get("type") != "custom":
        return None
    event: str = msg["payload"]["business_response"]["event"]
    return event


async def test_custom_round_trip_prints_message_end(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    client = await make_relay()
    code, out, err = await simulate(client, "--custom", REPORT, "--device-id", "66:9C:4B:DA:13:EA")
    assert code == 0, err
    msgs = received(out)
    assert (msgs[0]["type"], msgs[0]["transport"]) == ("hello", "websocket")
    sid = msgs[0]["session_id"]
    assert [business_event(m) for m in msgs[1:]] == ["message", "message_end"]
    # The payload reached the business unchanged but for the session id placeholder.
    assert fake.bodies == [REPORT.replace("$SESSION_ID", sid).encode()]
    assert "latency: custom sent → first event" in out
    assert "errors: none" in out


async def test_text_response_answer_written_to_wav(
    make_relay: RelayFactory, tmp_path: Path
) -> None:
    client = await make_relay()
    text = "Hello from the device simulator."
    wav_path = tmp_path / "answer.wav"
    code, out, err = await simulate(
        client, "--text-response", text, "--out", str(wav_path), "--json"
    )
    assert code == 0, err
    doc = orjson.loads(out)
    assert (doc["turn"], doc["errors"], doc["out"]) == ("text", [], str(wav_path))
    lat = doc["latency_ms"]
    assert lat["tts_start"] <= lat["first_audio"] < lat["tts_stop"]
    with wave.open(str(wav_path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        seconds = w.getnframes() / w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    expected = (await EmbeddedTTS().synthesize(text, Voice())).duration_s
    assert abs(seconds - expected) < 0.3, (seconds, expected)
    assert seconds == pytest.approx(doc["answer"]["seconds"], abs=0.01)
    assert float(np.sqrt(np.mean(samples**2))) > 300, "the answer is silent"
    # The transcript (stderr with --json) summarises audio per sentence, not per frame.
    assert f"frames, {doc['answer']['bytes']} bytes" in err
    assert "audio frame" not in err


async def test_spoken_utterance_manual_mode(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay(asr={"grammar_words": [COMMAND]})
    # Real time, as a device sends: faster, `listen stop` can overtake the audio still queued
    # in the relay (test_manual_stop_waits_for_queued_audio).
    code, out, err = await simulate(client, "--say", COMMAND, "--mode", "manual")
    assert code == 0, err
    assert f"stt: {COMMAND!r}" in out
    stt = [m for m in received(out) if m["type"] == "stt"]
    assert [m["text"] for m in stt] == [COMMAND]
    latency = next(line for line in out.splitlines() if line.startswith("latency:"))
    stages = [part.rsplit(" ", 2)[0] for part in latency.split(" → ")[1:]]
    assert latency.startswith("latency: end of speech → stt ")
    assert stages.index("stt") < stages.index("tts start") < stages.index("first audio")
    assert stages[-1] == "tts stop"
    assert orjson.loads(fake.bodies[0])["details"]["msg"] == COMMAND


@pytest.mark.parametrize(
    ("version", "mode", "extra"),
    [(2, "manual", ("--speed", "1")), (3, "auto", ("--pcm", "--speed", "4"))],
    ids=["v2-opus-manual", "v3-pcm-auto"],
)
async def test_protocol_versions(
    make_relay: RelayFactory, version: int, mode: str, extra: tuple[str, ...]
) -> None:
    client = await make_relay(asr={"grammar_words": [COMMAND]})
    args = ["--say", COMMAND, "--mode", mode, "--protocol", str(version), *extra]
    code, out, err = await simulate(client, *args, "--json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["stt"] == COMMAND
    assert doc["errors"] == []
    assert doc["answer"]["frames"] > 5
    lat = doc["latency_ms"]
    assert 0 < lat["stt"] <= lat["tts_start"] <= lat["first_audio"] < lat["tts_stop"]
    if "--pcm" in extra:  # the PCM variant: the relay answers in PCM at the device's rate
        assert doc["hello"]["audio_params"]["format"] == "pcm"


async def test_manual_stop_waits_for_queued_audio(make_relay: RelayFactory) -> None:
    # A burst (Wi-Fi stall, then catch-up): every frame arrives just before `listen stop`.
    # With the prefix in the grammar, only the whole utterance is heard as COMMAND.
    client = await make_relay(asr={"grammar_words": ["turn on", COMMAND]})
    code, out, _err = await simulate(client, "--say", COMMAND, "--speed", "1000", "--timeout", "5")
    assert code == 0
    assert f"stt: {COMMAND!r}" in out


async def test_bad_token_is_refused_with_the_relay_error(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"mode": "tokens", "tokens": ["t"]})
    code, out, err = await simulate(client, "--token", "wrong", "--custom", REPORT)
    assert code == 1
    assert "HTTP 401" in err
    assert '"errorType":"bad_token"' in err
    # The right token, as a browser sends it (query parameters), is accepted.
    code, out, err = await simulate(client, "--token", "t", "--query-auth")
    assert code == 0, err
    assert "(query parameters)" in out
    assert "connected: session " in out


async def test_timeout_exits_with_code_2(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        await asyncio.sleep(1.5)
        await resp.write(sse({"event": "message_end", "session_id": session_of(body)}))
        return resp

    fake.script = slow
    client = await make_relay()
    started = time.monotonic()
    code, out, err = await simulate(client, "--custom", REPORT, "--timeout", "0.5")
    assert code == 2
    assert "timeout: the turn did not end within 0.5 s" in err
    assert time.monotonic() - started < 1.5


async def test_abort_after_cuts_the_answer(make_relay: RelayFactory) -> None:
    client = await make_relay()
    text = "This answer is long enough to be cut off by the device before it ends. " * 2
    code, out, err = await simulate(client, "--text-response", text, "--abort-after", "0.3")
    assert code == 0, err
    assert '"type":"abort"' in out
    stops = [m for m in received(out) if m.get("state") == "stop"]
    assert [m["is_aborted"] for m in stops] == [True]
    assert "answer aborted" in out


async def test_replaced_mid_turn_exits_with_code_1(make_relay: RelayFactory) -> None:
    client = await make_relay()
    answer = "A long answer, still being spoken when the same device connects again. " * 3
    sim = asyncio.create_task(
        simulate(client, "--device-id", "66:9C:4B:DA:13:EA", "--text-response", answer)
    )
    await asyncio.sleep(0.8)  # the answer is being spoken
    newer = await Device.connect(client, device_id="66:9C:4B:DA:13:EA")
    code, out, err = await sim
    assert code == 1, out + err
    assert "closed by the relay (4001)" in out
    assert "errors: closed" in out
    await newer.ws.close()


async def test_load_twenty_devices_two_turns(make_relay: RelayFactory, fake: FakeBusiness) -> None:
    client = await make_relay()
    args = ["--custom", REPORT, "--devices", "20", "--turns", "2", "--ramp-batch", "10"]
    code, out, err = await simulate(client, *args, "--ramp-interval", "0.1")
    assert code == 0, out + err
    summary = orjson.loads(out.splitlines()[-1])
    assert (summary["turns"], summary["failed"], summary["errors"]) == (40, 0, {})
    assert summary["connected"] == 20
    assert summary["latency_ms"]["message_end"]["n"] == 40
    assert summary["turns_per_s"] > 0
    assert "turns 40 ok, 0 failed" in out  # the readable table
    assert "connected 20/20" in err  # the progress line
    # 20 distinct devices: 20 relay sessions, two business requests each.
    sessions = [orjson.loads(b)["details"]["session_id"] for b in fake.bodies]
    assert len(sessions) == 40
    assert len(set(sessions)) == 20
    assert {sessions.count(s) for s in sessions} == {2}


def test_device_ids_and_percentile() -> None:
    assert device_ids("66:9C:4B:DA:13:FF", 2) == ["66:9C:4B:DA:13:FF", "66:9C:4B:DA:14:00"]
    assert device_ids("bench", 2) == ["bench-0", "bench-1"]
    assert len(set(device_ids("", 100))) == 100
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)


@pytest.mark.parametrize(
    ("module", "warning"),
    [("devsim", ""), ("relay.devsim", "use python -m devsim")],  # the former name still runs
)
def test_help_runs_as_a_module(module: str, warning: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--devices", "--text-response", "--query-auth", "--abort-after"):
        assert option in result.stdout
    assert warning in result.stderr
    assert bool(warning) == ("FutureWarning" in result.stderr)


async def test_mcp_device_serves_its_tools_while_it_stays(make_relay: RelayFactory) -> None:
    # `--mcp`: the hello declares MCP and the simulator answers like the firmware; `--stay`
    # keeps it connected after its (empty) turn so its tools can be called (docs/devsim.md).
    client = await make_relay()
    run = asyncio.ensure_future(
        simulate(client, "--mcp", "--stay", "3", "--device-id", "66:9C:4B:DA:13:EA")
    )
    tools = "/api/v1/devices/669C4BDA13EA/tools"
    async with asyncio.timeout(10):
        while (resp := await client.get(tools)).status != 200:
            await asyncio.sleep(0.05)
    listed = await resp.json()
    assert "self.audio_speaker.set_volume" in [t["name"] for t in listed["tools"]]
    resp = await client.post(
        f"{tools}/self.audio_speaker.set_volume", json={"arguments": {"volume": 5}}
    )
    answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["result"]["content"] == [{"type": "text", "text": "true"}]
    resp = await client.post(f"{tools}/self.get_device_status")
    status = orjson.loads((await resp.json())["result"]["content"][0]["text"])
    assert status["audio_speaker"] == {"volume": 5}
    code, out, _err = await asyncio.wait_for(run, 10)
    assert code == 0
    assert any(m.get("type") == "mcp" for m in received(out))


async def test_mcp_device_says_louder_to_the_reference_business(
    make_relay: RelayFactory, aiohttp_server: Any
) -> None:
    # The whole loop of docs/devsim.md: typed text, a tool call the simulator answers,
    # the tool result spoken by the reference business.
    reference = await aiohttp_server(business_service.make_app())
    client = await make_relay(
        business_overrides={"device_tools": True, "url": str(reference.make_url("/chat"))}
    )
    code, out, err = await simulate(client, "--mcp", "--text", "louder")
    assert code == 0, err
    msgs = received(out)
    calls = [m["payload"] for m in msgs if m.get("type") == "mcp"]
    assert calls[-1]["method"] == "tools/call"
    assert calls[-1]["params"] == {
        "name": "self.audio_speaker.set_volume",
        "arguments": {"volume": 80},
    }
    assert "Done, the volume is now 80." in out
