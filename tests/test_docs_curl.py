"""Every curl command of docs/integration.md and docs/zh-CN/integration.md, run as documented.

The reference business and a relay run as subprocesses on the documented ports (8090, 8000),
or on free ports substituted consistently into the commands when those are taken. A
simulated MCP device (`66:9C:4B:DA:13:EA`, tests/relay/mcp_device.py) is connected
throughout, as the push and tools commands need. Each guide gets a relay and a business of its
own. Each ```sh block that contains `curl` runs with `bash -c`, in document order; it must exit
0 and print every `<!-- expect: … -->` line written just above it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.relay.fakes import Device
from tests.relay.mcp_device import MCP_HELLO, McpDevice
from tests.relay.test_cli import ROOT, clean_env, stop, wait_http
from tests.relay.test_simulate import closed_port

# The guide and its translations: each is run on its own, so a translation that lags shows.
GUIDES = (ROOT / "docs" / "integration.md", ROOT / "docs" / "zh-CN" / "integration.md")
each_guide = pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
RELAY_PORT, BUSINESS_PORT = 8000, 8090  # as documented
TOKEN = "docs-token"
DEVICE_MAC = "66:9C:4B:DA:13:EA"
# Bounds on what no test here measures: a command's run (the first answer loads Kokoro, ~1 s
# of two cores, 20-40 s at load 10-15), the hello. A hung command still fails.
COMMAND_TIMEOUT_S = 120.0
HELLO_TIMEOUT_S = 60.0
_BLOCK = re.compile(r"((?:<!-- expect: .*? -->\n)*)```sh\n(.*?)```", re.S)
_EXPECT = re.compile(r"<!-- expect: (.*?) -->")


@dataclass(frozen=True, slots=True)
class Command:
    """One ```sh block of the guide and what its output must contain."""

    line: int
    script: str
    expect: tuple[str, ...]


def guide_commands(guide: Path) -> list[Command]:
    """The guide's ```sh blocks that run curl, in order."""
    text = guide.read_text(encoding="utf-8")
    return [
        Command(
            line=text.count("\n", 0, m.start(2)) + 1,
            script=m.group(2),
            expect=tuple(_EXPECT.findall(m.group(1))),
        )
        for m in _BLOCK.finditer(text)
        if "curl" in m.group(2)
    ]


def port_free(port: int) -> bool:
    """Whether nothing listens on loopback `port` (so the relay or business may bind it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def with_ports(script: str, relay: int, business: int) -> str:
    """The command with the documented ports replaced by the ones in use."""
    script = re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", rf"\1:{relay}", script)
    return re.sub(r"\b(localhost|127\.0\.0\.1):8090\b", rf"\1:{business}", script)


@dataclass(frozen=True, slots=True)
class Stack:
    """The ports of the running business and relay."""

    relay: int
    business: int


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    relay_port = RELAY_PORT if port_free(RELAY_PORT) else closed_port()
    business_port = BUSINESS_PORT if port_free(BUSINESS_PORT) else closed_port()
    business = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/business_service.py",
        "--port",
        str(business_port),
        cwd=ROOT,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    relay: asyncio.subprocess.Process | None = None
    try:
        relay = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "relay", "serve", "--config", "config.toml"),
            *("--host", "127.0.0.1", "--port", str(relay_port)),
            cwd=ROOT,
            env=clean_env(
                RELAY__API__TOKENS=TOKEN,
                # The first answer waits for Kokoro's load: past the shipped 20 s on a loaded
                # machine, and the guide's simulate command would get no audio.
                RELAY__TTS__TIMEOUT_S="100",
                RELAY__BUSINESS__0__URL=f"http://127.0.0.1:{business_port}/chat",
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{business_port}/", business)
            await wait_http(http, f"http://127.0.0.1:{relay_port}/healthz", relay)
        yield Stack(relay_port, business_port)
    finally:
        if relay is not None:
            await stop(relay)
        await stop(business)


@each_guide
def test_guide_has_curl_commands_with_expectations(guide: Path) -> None:
    commands = guide_commands(guide)
    assert len(commands) >= 10, "the walkthrough lost its curl commands"
    for cmd in commands:
        assert cmd.expect, f"{guide} line {cmd.line}: curl block without <!-- expect -->"


@each_guide
async def test_every_curl_command_of_the_guide_works(guide: Path, stack: Stack) -> None:
    # Not a skip: a guide whose commands are never run rots unnoticed.
    assert shutil.which("curl"), "this test runs the guide's curl commands: apt-get install curl"
    env = {**clean_env(), "RELAY_TOKEN": TOKEN}
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"http://127.0.0.1:{stack.relay}/xiaozhi/v1/", headers={"Device-Id": DEVICE_MAC}
        )
        # A device that declares MCP and serves the firmware's tools (docs/protocol.md §3).
        await ws.send_str(orjson.dumps(MCP_HELLO).decode())
        hello = orjson.loads((await ws.receive(timeout=HELLO_TIMEOUT_S)).data)
        assert hello["type"] == "hello"
        dev = Device(ws, 1)
        dev.session_id = hello["session_id"]
        emu = McpDevice(dev).start()
        device_texts = emu.texts
        try:
            for cmd in guide_commands(guide):
                script = with_ports(cmd.script, stack.relay, stack.business)
                proc = await asyncio.create_subprocess_exec(
                    "bash",
                    "-c",
                    script,
                    cwd=ROOT,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    out_b, err_b = await proc.communicate()
                out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
                where = f"{guide} line {cmd.line}:\n{script}\nstderr: {err}\nstdout: {out}"
                assert proc.returncode == 0, where
                for expected in cmd.expect:
                    assert expected in out, f"{expected!r} missing; {where}"
        finally:
            await ws.close()
            await emu.stop()

    # The tool call of the guide ran on the device.
    assert emu.volume == 60
    # The device really received the pushed command, in the §2.4 envelope.
    pushed = [orjson.loads(t) for t in device_texts if '"wag_tail"' in t]
    assert [p["payload"]["original_request_type"] for p in pushed] == ["push"]
    # And the alert, with its connection's session id; not the notify it did not declare.
    native = [orjson.loads(t) for t in device_texts if t.startswith('{"session_id"')]
    alerts = [m for m in native if m["type"] in ("alert", "notify")]
    assert alerts == [
        {
            "session_id": hello["session_id"],
            "type": "alert",
            "status": "Reminder",
            "message": "Time for a walk",
            "emotion": "happy",
        }
    ]


def test_port_substitution_is_consistent() -> None:
    script = "curl localhost:8000/a 127.0.0.1:8090/b localhost:80000 x:8000"
    assert with_ports(script, 1, 2) == "curl localhost:1/a 127.0.0.1:2/b localhost:80000 x:8000"


@each_guide
def test_documented_startup_matches_the_test(guide: Path) -> None:
    text = guide.read_text(encoding="utf-8")
    assert f"python examples/business_service.py --port {BUSINESS_PORT}" in text
    assert (
        f"python -m relay serve --config config.toml --host 127.0.0.1 --port {RELAY_PORT}" in text
    )
    assert os.path.exists(ROOT / "examples" / "business_service.py")
