"""`python -m relay`: check-config exit codes, and serve end to end with the reference business."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.relay.test_simulate import closed_port, parse_sse

ROOT = Path(__file__).resolve().parents[2]
# How long a relay or business process may take to answer HTTP. Not what any test measures:
# ~1 s of CPU (imports, config, model file checks) that a machine at load 10-15 on 2 cores
# stretched past 15 s. A process that dies fails wait_http at once, whatever the bound.
STARTUP_S = 90.0
# For tests whose point is not the embedded models: espeak-ng speaks in milliseconds and
# pocketsphinx loads in a fraction of a second, where Kokoro and Whisper load for 1-3 s of CPU
# each (20-40 s on a loaded machine) beside the relay under test.
LIGHT_SPEECH = {"RELAY__TTS__PROVIDER": "espeak", "RELAY__ASR__PROVIDER": "pocketsphinx"}
SERVE_LOCAL = ("serve", "--config", "config.toml", "--host", "127.0.0.1", "--port")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without stray RELAY__ overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY__")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_config_accepts_shipped_config() -> None:
    result = run_cli("check-config", "--config", "config.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config ok"


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "eighty"\n', encoding="utf-8")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: server.port"), result.stderr
    assert "config ok" not in result.stdout
    assert "Traceback" not in result.stderr


def test_check_config_reports_bad_env_override() -> None:
    result = run_cli(
        "check-config", "--config", "config.toml", env=clean_env(RELAY__BUSINESS__0__URL="x")
    )
    assert result.returncode == 2
    assert result.stderr.startswith("config error: business[0].url"), result.stderr


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, wait, kill when it does not exit in time; the exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


async def spawn_relay(
    port: int, *args: str, business_port: int | None = None, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`python -m relay serve` on loopback `port` with the shipped config and the overrides in
    `env` (its stderr, the log, piped), pointed at the reference business on `business_port`
    if given."""
    extra = dict(env or {})
    if business_port is not None:
        extra["RELAY__BUSINESS__0__URL"] = f"http://127.0.0.1:{business_port}/chat"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *SERVE_LOCAL,
        str(port),
        *args,
        cwd=ROOT,
        env=clean_env(**extra),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def spawn_business(port: int, *args: str) -> asyncio.subprocess.Process:
    """The reference business service (examples/business_service.py) on loopback `port`."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/business_service.py",
        "--port",
        str(port),
        *args,
        cwd=ROOT,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def wait_http(session: aiohttp.ClientSession, url: str, proc: Any) -> None:
    """Poll `url` until any HTTP answer comes back, bounded by STARTUP_S."""
    async with asyncio.timeout(STARTUP_S):
        while True:
            assert proc.returncode is None, "process exited during startup"
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def test_serve_runs_a_turn_with_the_reference_business() -> None:
    relay_port, business_port, metrics_port = closed_port(), closed_port(), closed_port()
    business = await spawn_business(business_port)
    relay: asyncio.subprocess.Process | None = None
    try:
        relay = await spawn_relay(
            relay_port,
            business_port=business_port,
            env={
                "RELAY__API__TOKENS": "t0ken",
                "RELAY__METRICS__PORT": str(metrics_port),
                # The turn is typed: Kokoro speaks it, no recogniser hears anything, so the
                # light one, and no Whisper loads beside Kokoro at start.
                "RELAY__ASR__PROVIDER": "pocketsphinx",
            },
        )
        base = f"http://127.0.0.1:{relay_port}"
        auth = {"Authorization": "Bearer t0ken"}
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{business_port}/", business)
            await wait_http(http, f"{base}/healthz", relay)
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            async with asyncio.timeout(60):  # the shipped config: Kokoro loads on first use
                resp = await http.post(
                    f"{base}/api/v1/simulate",
                    json={"device_id": "d-cli", "text": "please dance"},
                    headers=auth,
                )
                assert resp.status == 200
                events = parse_sse(await resp.text())
            # [metrics] port: /metrics without a token, the simulated turn counted apart.
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200
                scraped = await resp.text()
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 401

        assert events[0].data["type"] == "stt"
        assert [e for e in events if e.name == "audio"], "no audio"
        texts = [e.data for e in events if e.name == "message"]
        responses = [m["payload"]["business_response"] for m in texts if m["type"] == "custom"]
        commands = [r for r in responses if r.get("type") == "command"]
        assert [a["action"] for a in commands[0]["details"]["actions"]] == ["dance"]
        assert responses[-1]["event"] == "message_end"
        assert texts[-1]["type"] == "tts"
        assert texts[-1]["state"] == "stop"
        assert texts[-1]["is_aborted"] is False
        ok = 'relay_business_requests_total{business="reference",outcome="ok",source='
        assert f'{ok}"simulate"}} 1.0' in scraped
        assert f'{ok}"device"}} 0.0' in scraped

        code = await stop(relay)
        assert relay.stderr is not None
        stderr = (await relay.stderr.read()).decode(errors="replace")
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if relay is not None:
            await stop(relay)
        await stop(business)


def test_version_names_the_package_and_python() -> None:
    import platform
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"relay {version} (Python {platform.python_version()})"


def test_the_relay_console_script_runs_the_cli() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["relay"].partition(":")
    code = "import sys; sys.argv = ['relay', 'check-config', '--config', 'config.toml']; "
    code += f"from {module} import {func}; {func}()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "config ok"), result.stderr


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "reuseport"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_code_2(workers: str, shared: bool) -> None:
    # `shared`: the port is held as another relay's workers hold it (SO_REUSEPORT); a relay
    # with --workers must not join that group and start beside it unnoticed.
    with socket.socket() as holder:
        if shared:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(*SERVE_LOCAL, str(port), "--workers", workers)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cannot listen on 127.0.0.1:{port}: Address already in use (another process listens "
        "there: stop it, or choose another port with --port or [server] port)"
    ], result.stderr


def run_script(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env=clean_env(PYTHON=sys.executable, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_run_sh_stops_clearly_when_the_business_port_is_taken() -> None:
    relay_port = closed_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_script({"BUSINESS_PORT": str(port), "RELAY_PORT": str(relay_port)})
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.communicate(timeout=30)
    assert proc.returncode == 1, (out, err)
    assert f"port {port} is in use" in err
    assert "relay on" not in out  # the relay never started
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", relay_port)) != 0


async def test_run_sh_uses_its_ports_and_enables_the_console() -> None:
    business_port, relay_port = closed_port(), closed_port()
    env = {"BUSINESS_PORT": str(business_port), "RELAY_PORT": str(relay_port)}
    # Ports and the console are under test, not speech: no Kokoro or Whisper load at start.
    proc = run_script({**env, **LIGHT_SPEECH})
    base = f"http://127.0.0.1:{relay_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(STARTUP_S * 2):
                while True:
                    assert proc.poll() is None, proc.communicate()
                    try:
                        resp = await http.get(f"{base}/readyz")
                        if (await resp.json())["status"] == "ready":
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            assert (await http.get(f"{base}/console")).status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{business_port}/chat" in out
    assert f"browser console: {base}/console" in out
