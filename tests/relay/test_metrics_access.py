"""`/metrics`: readable with a metrics-only token (`[metrics] tokens`) that opens nothing
else, and carrying the build and process information (docs/metrics.md)."""

from __future__ import annotations

import platform
import re
import tomllib
from pathlib import Path

from tests.relay.conftest import RelayFactory

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
