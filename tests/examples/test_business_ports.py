"""The Node and Go business examples (examples/business-node/, examples/business-go/) do what
the reference service does: run as a newcomer runs them, they answer every request exactly as
examples/business_service.py does (device tools' tool_call and tool_result included), check
tokens and X-Relay-Signature the same way, and serve a device through a real relay, one with
the firmware's tools among them. Node and Go come from Debian (`nodejs`, `golang-go`, installed by
scripts/setup.sh); where one is absent its tests are skipped with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.app import make_app
from relay.config.load import parse
from tests.examples.test_business_service import (
    BAD_SIGNATURES,
    BODY,
    SECRET,
    SID,
    VOLUME_TOOLS,
    answers,
    parse_sse,
    request_body,
    signed,
    until_logged,
)
from tests.relay.fakes import Device, is_end, is_tts_stop
from tests.relay.test_cli import ROOT, clean_env, stop, wait_http
from tests.relay.test_mcp_answers import captions, tools_device, turn_of
from tests.relay.test_simulate import closed_port

Event = dict[str, Any]
PORTS = ["node", "go"]
TOKEN = "business-token-0123"


def node_command() -> list[str]:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no `node` on PATH: the Node business example was NOT tested (apt nodejs)")
    return [node, str(ROOT / "examples/business-node/server.js")]


@pytest.fixture(scope="session")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go example built once per test session (the build cache outlives it)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no `go` on PATH: the Go business example was NOT tested (apt golang-go)")
    binary = tmp_path_factory.mktemp("business-go") / "business-go"
    cache = os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "relay-test-gocache")
    env = clean_env(GOCACHE=cache, GOTOOLCHAIN="local", CGO_ENABLED="0")
    env.setdefault("GOPATH", str(Path(cache) / "gopath"))  # no module is fetched: stdlib only
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=ROOT / "examples/business-go",
        env=env,
        check=True,
        timeout=300,
    )
    return binary


REFERENCE = [sys.executable, "examples/business_service.py"]


def command_of(request: pytest.FixtureRequest, language: str) -> list[str]:
    """How to start the service in `language`, without its options."""
    if language == "python":
        return REFERENCE
    if language == "node":
        return node_command()
    return [str(request.getfixturevalue("go_binary"))]


@pytest.fixture(params=PORTS)
def port_command(request: pytest.FixtureRequest) -> list[str]:
    """How to start one of the examples, without its options."""
    return command_of(request, request.param)


@pytest.fixture(params=["python", *PORTS])
def any_command(request: pytest.FixtureRequest) -> list[str]:
    """The reference service or one of the examples."""
    return command_of(request, request.param)


@asynccontextmanager
async def serving(command: Sequence[str], log_path: Path, *args: str) -> AsyncIterator[str]:
    """Run `command --port N *args` on loopback; yield its /chat URL. On the way out it must
    stop on SIGTERM with exit code 0 and have logged no error."""
    port = closed_port()
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *command,
            *("--port", str(port), *args),
            cwd=ROOT,
            env=clean_env(),
            stdout=log_file,
            stderr=log_file,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await wait_http(http, f"http://127.0.0.1:{port}/", proc)
            yield f"http://127.0.0.1:{port}/chat"
        finally:
            code = await stop(proc)
    log = await asyncio.to_thread(log_path.read_text, encoding="utf-8", errors="replace")
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http:
        h = {"Content-Type": "application/json", **(headers or {})}
        async with http.post(url, data=body, headers=h) as resp:
            return resp.status, resp.content_type, await resp.read()


def check_and_blank_the_clock(events: list[Event]) -> list[Event]:
    """The get answer's time fields are checked for form, then blanked so that two services'
    answers can be compared; everything else is left as it is."""
    for event in events:
        for action in event.get("details", {}).get("actions", []):
            if action["action"] != "data_response":
                continue
            params = action["params"]
            assert abs(params["timestamp_ms"] - time.time() * 1000) < 60_000
            iso = datetime.fromisoformat(params["iso_time"])
            assert iso.tzinfo is not None
            assert abs(iso.timestamp() * 1000 - params["timestamp_ms"]) < 1
            local = datetime.fromtimestamp(params["timestamp_ms"] / 1000)
            assert params["current_time"] == local.strftime("%Y-%m-%d %H:%M:%S")
            params.update(current_time="T", timestamp_ms=0, iso_time="T")
    return events


REQUESTS: dict[str, object] = {
    "chat in English": request_body("chat", msg="How is the weather?"),
    "chat in Chinese": request_body("chat", msg="今天天气怎么样"),
    "greeting": request_body("chat", msg="Good morning, robot"),
    "hi inside a word": request_body("chat", msg="This is a story"),
    "Chinese greeting": request_body("chat", msg="你好"),
    "nothing heard": request_body("chat", msg="   "),
    "msg not a string": request_body("chat", msg=3),
    "two keywords": request_body("chat", msg='  Please WAG your tail and dance <now> & "go"'),
    "Chinese keyword": request_body("chat", msg="跳舞"),
    "report": request_body("report", events=[{"event": "touch", "params": {"count": 1}}]),
    "reset": request_body("reset", type="count", reason="user_request"),
    "get": request_body("get", events=[{"event": "getCurrentTime", "params": {}}]),
    "unknown type": request_body("dance_party"),
    "long unknown type": request_body("x" * 60),
    "no session id": {"type": "chat", "details": {"msg": "wag"}},
    "null session id": {"type": "reset", "details": {"session_id": None}},
    "details not an object": {"type": "chat", "details": [1]},
    # Device tools (docs/protocol.md §3.3): a volume phrase with the tool is a tool call.
    "louder with the tool": request_body("chat", msg=" Louder please ", tools=VOLUME_TOOLS),
    "Chinese louder": request_body("chat", msg="大声一点", tools=VOLUME_TOOLS),
    "quieter": request_body("chat", msg="Could you TURN IT DOWN?", tools=VOLUME_TOOLS),
    "louder without the tool": request_body(
        "chat", msg="louder", tools=[{"name": "self.x"}, VOLUME_TOOLS[0]["name"], {"name": 3}]
    ),
    "tools not a list": request_body("chat", msg="louder", tools=VOLUME_TOOLS[0]),
    "tool result": request_body(
        "tool_result",
        call_id="volume-80-en",
        name=VOLUME_TOOLS[0]["name"],
        is_error=False,
        result={"content": [{"type": "text", "text": "true"}], "isError": False},
    ),
    "Chinese tool result": request_body("tool_result", call_id="volume-30-zh", result={}),
    "another call's result": request_body("tool_result", call_id="c1", result={}),
    "call id not a string": request_body("tool_result", call_id=80, result={}),
    "failed call": request_body(
        "tool_result", call_id="volume-80-en", error={"code": "timeout", "message": "too slow"}
    ),
    "failed call, no message": request_body("tool_result", error={"code": "x", "message": 1}),
    "error null": request_body("tool_result", call_id="volume-80-en", error=None),
    "mcp notification": request_body("mcp_notification", payload={"method": "x"}),
}
BAD_BODIES = [
    b"not json",
    b"",
    b"[1, 2]",
    b'"chat"',
    b'{"details": {}}',
    b'{"type": 3}',
    b'{"type": null}',
]


async def test_answers_are_the_reference_services_answers(
    port_command: list[str], tmp_path: Path
) -> None:
    async with (
        serving(REFERENCE, tmp_path / "reference.log") as reference,
        serving(port_command, tmp_path / "port.log") as port,
    ):
        for name, body in REQUESTS.items():
            raw = orjson.dumps(body)
            answers = []
            for url in (reference, port):
                status, content_type, data = await post(url, raw)
                assert (status, content_type) == (200, "text/event-stream"), (name, data)
                answers.append(check_and_blank_the_clock(parse_sse(data)))
            # Same events, same keys in the same order (json.dumps keeps the order).
            assert json.dumps(answers[1]) == json.dumps(answers[0]), name
        for raw in BAD_BODIES:
            status, content_type, data = await post(port, raw)
            assert (status, content_type) == (400, "application/json"), raw
            assert isinstance(orjson.loads(data)["error"], str)


async def test_chat_events_are_written_as_they_are_produced(
    port_command: list[str], tmp_path: Path
) -> None:
    delay = 0.3
    async with (
        serving(port_command, tmp_path / "port.log", "--chat-delay", str(delay)) as url,
        aiohttp.ClientSession() as http,
        http.post(url, json=request_body("chat", msg="hello")) as resp,
    ):
        first = await resp.content.readuntil(b"\n\n")
        received_first = time.monotonic()
        rest = await resp.content.read()
        # A buffered answer would deliver the rest together with the first event.
        assert time.monotonic() - received_first >= delay * 0.8
    assert parse_sse(first)[0]["type"] == "chat"
    assert parse_sse(rest)[-1] == {"event": "message_end", "session_id": SID}


async def test_a_client_gone_mid_answer_is_no_error_and_the_next_is_answered(
    any_command: list[str], tmp_path: Path
) -> None:
    # The relay closes the connection in the middle of an answer when it cancels a turn (an
    # abort, a barge-in): the service, run as a newcomer runs it, must take that quietly.
    log_path = tmp_path / "business.log"
    async with (
        serving(any_command, log_path, "--chat-delay", "0.1") as url,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(3):
            resp = await http.post(url, json=request_body("chat", msg="Tell me a story"))
            assert resp.status == 200
            assert parse_sse(await resp.content.readuntil(b"\n\n"))[0]["type"] == "chat"
            resp.close()  # drops the connection with the rest of the answer unread
        await until_logged(log_path, "went away", 3)  # its next writes met closed sockets
        async with http.post(url, json=request_body("chat", msg="Hello")) as resp:
            assert resp.status == 200
            events = parse_sse(await resp.read())
    assert events[-1] == {"event": "message_end", "session_id": SID}
    assert "Hello" in " ".join(answers(events))
    # Noticed, at information level (serving() checked: no error, no traceback, exit 0).
    log = await asyncio.to_thread(log_path.read_text, encoding="utf-8")
    gone = [line for line in log.splitlines() if "went away" in line]
    assert len(gone) == 3, log
    assert all(" INFO " in line for line in gone), log


async def test_token_and_signature_are_checked_like_the_reference(
    port_command: list[str], tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    args = ("--token", TOKEN, "--signing-secret", SECRET)
    async with serving(port_command, tmp_path / "port.log", *args) as url:
        now = int(time.time())
        for skew in (0, -280, 280):
            status, _, data = await post(
                url, BODY, {**auth, "X-Relay-Signature": signed(BODY, now + skew)}
            )
            assert status == 200, skew
            assert parse_sse(data) == [{"event": "message_end", "session_id": SID}]
        for case, make in BAD_SIGNATURES.items():
            header = make(int(time.time()))
            headers = auth if header is None else {**auth, "X-Relay-Signature": header}
            status, _, data = await post(url, BODY, headers)
            assert status == 401, case
            assert "X-Relay-Signature" in orjson.loads(data)["error"], case
        good = {"X-Relay-Signature": signed(BODY, int(time.time()))}
        for authorization in (None, "Bearer wrong", TOKEN, f"Bearer {TOKEN}2"):
            headers = good if authorization is None else {**good, "Authorization": authorization}
            status, _, data = await post(url, BODY, headers)
            assert status == 401, authorization
            assert orjson.loads(data)["error"]


def relay_config(url: str, secret: str) -> dict[str, Any]:
    return {
        "server": {"hello_timeout_s": 2.0},
        "tts": {"provider": "espeak"},  # the light voice: the business is under test here
        "business": [
            {
                "name": "example",
                "url": url,
                "token": TOKEN,
                "signing_secret": secret,
                "first_event_timeout_s": 5.0,
                "idle_timeout_s": 5.0,
                "device_tools": True,
            }
        ],
    }


def business_events(msgs: list[Event]) -> list[Event]:
    return [m["payload"]["business_response"] for m in msgs if m.get("type") == "custom"]


async def custom(dev: Device, type_: str, **details: Any) -> list[Event]:
    details = {**details, "session_id": dev.session_id}
    payload = {"auth": {"device_id": "669C4BDA13EA"}, "type": type_, "details": details}
    await dev.send({"session_id": dev.session_id, "type": "custom", "payload": payload})
    return business_events(await dev.recv_until(is_end))


async def test_a_device_talks_to_it_through_the_relay(
    port_command: list[str], tmp_path: Path, aiohttp_client: Any
) -> None:
    args = ("--token", TOKEN, "--signing-secret", SECRET)
    async with serving(port_command, tmp_path / "port.log", *args) as url:
        client = await aiohttp_client(make_app(parse(relay_config(url, SECRET))))
        dev = await Device.connect(client)
        await dev.send(
            {
                "session_id": dev.session_id,
                "type": "listen",
                "state": "detect",
                "text": "please dance",
            }
        )
        msgs = await dev.recv_until(is_tts_stop, timeout=30)
        spoken = " ".join(m["text"] for m in msgs if m.get("state") == "sentence_start")
        assert 'You said: "please dance".' in spoken
        assert any(m.get("emotion") == "neutral" for m in msgs if m.get("type") == "llm")
        assert dev.audio, "nothing was spoken"
        commands = [e for e in business_events(msgs) if e.get("type") == "command"]
        assert commands[0]["details"]["actions"] == [{"action": "dance", "params": {"duration": 5}}]
        assert msgs[-1]["is_aborted"] is False

        assert await custom(dev, "report", events=[{"event": "touch"}]) == [
            {"event": "message_end", "session_id": dev.session_id}
        ]
        reset = await custom(dev, "reset", type="count")
        assert reset[0]["details"]["actions"][0]["action"] == "reset_complete"
        got = check_and_blank_the_clock(await custom(dev, "get", events=["getCurrentTime"]))
        assert got[0]["details"]["actions"][0]["params"]["battery_level"] == 85
        assert got[-1] == {"event": "message_end", "session_id": dev.session_id}

        await dev.ws.close()
        await volume_through_the_relay(client)

        # A relay that signs with another secret is refused: the device hears of it.
        wrong = await aiohttp_client(make_app(parse(relay_config(url, "another-secret"))))
        other = await Device.connect(wrong)
        [error] = await custom(other, "report")
        assert error["event"] == "error"
        assert error["details"]["code"] == "business_status"


async def volume_through_the_relay(client: Any) -> None:
    """A device with the firmware's tools says "louder": the business answers a tool_call, the
    relay runs it on the device and posts the tool_result, whose answer is spoken
    (docs/protocol.md §3.3). The other phrases are covered by REQUESTS, without the relay."""
    emu = await tools_device(client)
    try:
        msgs = await turn_of(emu, "louder")
        assert [c["params"] for c in emu.calls()] == [
            {"name": VOLUME_TOOLS[0]["name"], "arguments": {"volume": 80}}
        ]
        assert emu.volume == 80
        assert captions(msgs) == ["Done, the volume is now 80."]
        ends = [m["payload"] for m in msgs if m.get("type") == "custom"]
        assert [e["original_request_type"] for e in ends] == ["chat", "tool_result"]
        assert [e["business_response"]["event"] for e in ends] == ["message_end"] * 2
    finally:
        await emu.stop()
