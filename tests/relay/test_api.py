"""Health, readiness, draining and the Prometheus metrics an operator watches."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from metrics.registry import OUTCOMES, Metrics
from protocol.errors import BusinessOutcome
from relay.resources import RELAY_KEY
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, is_end
from tests.relay.test_business_failures import custom, wait_metric
from tests.relay.test_simulate import simulate

UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Device-Id": "d1",
}


async def scrape(
    client: TestClient[Any, Any],
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics, check it is Prometheus text, and index its samples by name and labels."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """A sample's value; 0 when the labelled child does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_health_and_readiness(make_relay: RelayFactory) -> None:
    client = await make_relay()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"


async def test_health_needs_no_api_token(make_relay: RelayFactory) -> None:
    client = await make_relay(api={"tokens": ["k1"]})
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_draining_refuses_devices_and_fails_readiness(make_relay: RelayFactory) -> None:
    client = await make_relay()
    assert client.app is not None
    client.app[RELAY_KEY].draining.set()

    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "draining"
    assert (await client.get("/healthz")).status == 200  # still alive

    resp = await client.get("/xiaozhi/v1/", headers=UPGRADE)
    assert resp.status == 503
    body = await resp.json()
    assert set(body) == {"error", "errorType", "hint"}
    assert body["errorType"] == "draining"
    samples = await scrape(client)
    assert value(samples, "relay_handshake_rejected_total", reason="draining") == 1.0


async def test_metrics_count_hello_and_connections(make_relay: RelayFactory) -> None:
    client = await make_relay()
    before = await scrape(client)
    assert ("relay_connections_active", frozenset()) in before
    assert value(before, "relay_connections_active") == 0.0
    hellos = value(before, "relay_messages_total", type="hello", direction="in")

    dev = await Device.connect(client)
    during = await scrape(client)
    assert value(during, "relay_messages_total", type="hello", direction="in") == hellos + 1
    assert value(during, "relay_messages_total", type="hello", direction="out") >= 1
    assert value(during, "relay_connections_active") == 1.0

    await dev.ws.close()
    async with asyncio.timeout(5):
        while value(await scrape(client), "relay_connections_active") != 0.0:
            await asyncio.sleep(0.02)
    after = await scrape(client)
    assert value(after, "relay_connections_closed_total", code="1000") == 1.0


async def test_metrics_count_event_loop_tasks(make_relay: RelayFactory) -> None:
    client = await make_relay()
    idle = value(await scrape(client), "relay_event_loop_tasks")
    assert idle >= 1  # at least the scrape's own handler
    devices = [await Device.connect(client, device_id=f"dev-{i}") for i in range(3)]
    assert value(await scrape(client), "relay_event_loop_tasks") >= idle + 3
    for dev in devices:
        await dev.ws.close()
    async with asyncio.timeout(5):  # each connection's tasks end with it
        while value(await scrape(client), "relay_event_loop_tasks") != idle:
            await asyncio.sleep(0.02)


async def test_metrics_count_business_requests(make_relay: RelayFactory) -> None:
    client = await make_relay()
    ok = {"business": "fake", "outcome": "ok"}
    before = await scrape(client)
    # The configured business's series exist from the start, for both sources.
    assert value(before, "relay_business_requests_total", **ok, source="simulate") == 0.0
    assert (
        "relay_business_requests_total",
        frozenset({**ok, "source": "device"}.items()),
    ) in before
    events = await simulate(client, {"device_id": "d", "text": "count me"})
    assert [e for e in events if e.name == "audio"]
    after = await scrape(client)
    # A simulated turn is counted apart from the devices' turns.
    assert value(after, "relay_business_requests_total", **ok, source="simulate") == 1.0
    assert value(after, "relay_business_requests_total", **ok, source="device") == 0.0
    duration = "relay_business_request_duration_seconds_count"
    assert value(after, duration, business="fake", source="simulate") == 1.0
    assert value(after, "relay_audio_frames_total", direction="out") > 0
    dev = await Device.connect(client)
    await dev.send(custom(dev))
    await dev.recv_until(is_end)
    await wait_metric(client, 'relay_business_requests_total{source="device",business="fake"}', 1)
    after = await scrape(client)
    assert value(after, "relay_business_requests_total", **ok, source="device") == 1.0
    assert value(after, "relay_business_requests_total", **ok, source="simulate") == 1.0


def test_the_business_label_takes_configured_names_only() -> None:
    metrics = Metrics()
    metrics.name_businesses(["weather", "shop"])
    metrics.business("weather", "device").requests["ok"].inc()
    metrics.business("not-configured", "device").requests["ok"].inc()
    metrics.business("also-not", "simulate").requests["status"].inc()
    text = metrics.exposition().decode()
    names = {
        s.labels["business"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "relay_business_requests_total"
    }
    assert names == {"weather", "shop", "other"}
    assert 'relay_business_requests_total{business="other",outcome="ok",source="device"} 1.0' in (
        text
    )


def test_the_outcomes_counted_are_the_protocols() -> None:
    assert set(OUTCOMES) == {o.value for o in BusinessOutcome}
