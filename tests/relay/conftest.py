"""Relay fixtures: the relay app under `aiohttp_client`, a fake business on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.app import make_app
from relay.config.load import parse
from tests.relay.fakes import FakeBusiness

RelayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def business(aiohttp_server: Any) -> tuple[FakeBusiness, TestServer]:
    fake = FakeBusiness()
    server = await aiohttp_server(fake.app())
    return fake, server


@pytest.fixture
def make_relay(aiohttp_client: Any, business: tuple[FakeBusiness, TestServer]) -> RelayFactory:
    """Build a relay whose default business is the fake; `overrides` are TOML-like tables."""
    _fake, server = business

    async def factory(**overrides: Any) -> TestClient[Any, Any]:
        data: dict[str, Any] = {
            "server": {"hello_timeout_s": 2.0},
            # The light voice unless a test asks for Kokoro (tests/relay/test_kokoro_voice.py).
            "tts": {"provider": "espeak"},
            "business": [
                {
                    "name": "fake",
                    "url": str(server.make_url("/chat")),
                    "first_event_timeout_s": 2.0,
                    "idle_timeout_s": 2.0,
                }
            ],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            elif key == "business_overrides":
                data["business"][0].update(value)
            else:
                data[key] = value
        client: TestClient[Any, Any] = await aiohttp_client(make_app(parse(data)))
        return client

    return factory


@pytest.fixture
def fake(business: tuple[FakeBusiness, TestServer]) -> FakeBusiness:
    return business[0]
