"""`/metrics`: readable with a metrics-only token (`[metrics] tokens`) that opens nothing
else, or without a token on a listener of its own (`[metrics] port`), and carrying the build
and process information (docs/metrics.md)."""

from __future__ import annotations

import platform
import re
import socket
import tomllib
from pathlib import Path

import aiohttp
import pytest

from relay.config.load import parse
from relay.config.schema import ConfigError
from relay.run.server import start_metrics
from tests.relay.conftest import RelayFactory
from tests.relay.test_cli import SERVE_LOCAL, clean_env, run_cli
from tests.relay.test_simulate import closed_port

ROOT = Path(__file__).resolve().parents[2]
API, METRICS = "api-t0ken", "metrics-t0ken"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_metrics_token_reads_metrics_and_nothing_else(make_relay: RelayFactory) -> None:
    client = await make_relay(api={"tokens": [API]}, metrics={"tokens": [METRICS]})
    assert (await client.get("/metrics", headers=bearer(METRICS))).status == 200
    assert (await client.get("/metrics", headers=bearer(API))).status == 200
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=bearer("other"))).status == 401
    assert (await client.get("/api/v1/devices", headers=bearer(METRICS))).status == 401
    body = {"device_id": "d1", "text": "hello"}
    resp = await client.post("/api/v1/simulate", json=body, headers=bearer(METRICS))
    assert resp.status == 401
    resp = await client.post(
        "/api/v1/devices/d1/messages", json={"speak": "hi"}, headers=bearer(METRICS)
    )
    assert resp.status == 401


async def test_metrics_carry_the_build_and_the_process(make_relay: RelayFactory) -> None:
    client = await make_relay()
    text = await (await client.get("/metrics")).text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    python = platform.python_version()
    assert f'relay_build_info{{python="{python}",version="{version}"}} 1.0' in text
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"):
        match = re.search(rf"^relay_{name} (\S+)$", text, re.M)
        assert match, name
        assert float(match.group(1)) > 0, name
    rss = float(re.search(r"^relay_process_resident_memory_bytes (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert rss > 10e6


async def test_the_metrics_port_serves_metrics_alone_without_a_token(
    make_relay: RelayFactory,
) -> None:
    client = await make_relay(api={"tokens": [API]}, metrics={"tokens": [METRICS]})
    with pytest.raises(aiohttp.WSServerHandshakeError):  # counted by the main port's app
        await client.ws_connect("/xiaozhi/v1/")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        runner = await start_metrics(client.app, sock)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                    assert resp.content_type == "text/plain"
                async with http.get(f"{base}/api/v1/devices", headers=bearer(API)) as resp:
                    assert resp.status == 404
                async with http.post(f"{base}/api/v1/simulate", json={}) as resp:
                    assert resp.status in (404, 405)
        finally:
            await runner.cleanup()
    assert 'relay_handshake_rejected_total{reason="no_device_id"} 1.0' in text
    assert (await client.get("/metrics")).status == 401  # the main port keeps its rules


def test_a_busy_metrics_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            *SERVE_LOCAL, str(closed_port()), env=clean_env(RELAY__METRICS__PORT=str(port))
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cannot listen on 127.0.0.1:{port}: "), lines[0]
    assert "[metrics] port" in lines[0]


def test_the_metrics_port_must_be_a_port_of_its_own() -> None:
    with pytest.raises(ConfigError, match="metrics.port: must not be"):
        parse({"server": {"port": 8000}, "metrics": {"port": 8000}})
    with pytest.raises(ConfigError, match="metrics.port: must be between"):
        parse({"metrics": {"port": 70000}})
    assert parse({"server": {"port": 8000}, "metrics": {"port": 9100}}).metrics.port == 9100
