"""Device tokens: the xiaozhi-server HMAC format, and bindings looked up in a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from relay.auth.tokens import (
    DEFAULT_SKEW_S,
    TokenBinding,
    TokenStoreUnavailable,
    binding_allows,
    lookup_redis_token,
    mint,
    open_token_store,
    verify,
)
from tests.relay.redis_server import (  # noqa: F401 (pytest finds the fixture by name)
    RedisServer,
    ResettingRelay,
    free_port,
    redis_server_fixture,
)

SECRET = "top-secret"
CLIENT = "client-1"
DEVICE = "AA:BB:CC:DD:EE:FF"
TS = 1_700_000_000
DAY = 86_400.0


def test_mint_matches_the_xiaozhi_server_format() -> None:
    # printf 'client-1|AA:BB:CC:DD:EE:FF|1700000000' \
    #   | openssl dgst -sha256 -hmac top-secret -binary | base64 | tr '+/' '-_' | tr -d =
    expected = "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.1700000000"
    assert mint(SECRET, CLIENT, DEVICE, TS) == expected


def test_minted_token_verifies() -> None:
    token = mint(SECRET, CLIENT, DEVICE, TS)
    assert verify(SECRET, token, CLIENT, DEVICE, TS + 10, DAY)


@pytest.mark.parametrize(
    ("secret", "client", "device"),
    [
        ("other-secret", CLIENT, DEVICE),
        (SECRET, "client-2", DEVICE),
        (SECRET, CLIENT, "AA:BB:CC:DD:EE:00"),
        ("", CLIENT, DEVICE),
    ],
)
def test_token_for_other_secret_client_or_device_fails(
    secret: str, client: str, device: str
) -> None:
    token = mint(SECRET, CLIENT, DEVICE, TS)
    assert not verify(secret, token, client, device, TS, DAY)


def test_device_id_may_be_sent_raw_or_signed_canonical() -> None:
    canonical = mint(SECRET, CLIENT, "AABBCCDDEEFF", TS)
    assert verify(SECRET, canonical, CLIENT, DEVICE, TS, DAY)
    raw = mint(SECRET, CLIENT, DEVICE, TS)
    assert verify(SECRET, raw, CLIENT, DEVICE, TS, DAY)


def test_expired_token_fails() -> None:
    token = mint(SECRET, CLIENT, DEVICE, TS)
    assert verify(SECRET, token, CLIENT, DEVICE, TS + DAY, DAY)
    assert not verify(SECRET, token, CLIENT, DEVICE, TS + DAY + 1, DAY)


def test_future_token_fails_beyond_skew() -> None:
    token = mint(SECRET, CLIENT, DEVICE, TS)
    assert verify(SECRET, token, CLIENT, DEVICE, TS - DEFAULT_SKEW_S, DAY)
    assert not verify(SECRET, token, CLIENT, DEVICE, TS - DEFAULT_SKEW_S - 1, DAY)
    assert not verify(SECRET, token, CLIENT, DEVICE, TS - 10, DAY, skew_s=5)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.",
        ".1700000000",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA=.1700000000",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHh.1700000000",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.1700000000.1",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.-1700000000",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.17e8",
        "5IhGwMXu5IEWczbjF7gjo+ibFaKVWyeX4TiLlA8tHhA.1700000000",
        "Bearer 5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.1700000000",
        "5IhGwMXu5IEWczbjF7gjo_ibFaKVWyeX4TiLlA8tHhA.1700000000\n",
        "x" * 10_000,
    ],
)
def test_malformed_token_fails(token: str) -> None:
    assert not verify(SECRET, token, CLIENT, DEVICE, TS, DAY)


def test_mint_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        mint("", CLIENT, DEVICE, TS)


# -- redis mode ---------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_server.url)
    yield r
    await r.aclose()


async def test_json_binding_is_found(redis: Redis) -> None:
    await redis.set("token:abc", b'{"device_id":"66:9C:4B:DA:13:EA","user_id":42}')
    binding = await lookup_redis_token(redis, "abc")
    assert binding == TokenBinding("66:9C:4B:DA:13:EA", "42", None)
    assert binding_allows(binding, "669C4BDA13EA")
    assert not binding_allows(binding, "669C4BDA13EB")


async def test_hash_binding_is_found(redis: Redis) -> None:
    await redis.hset(
        "token:h1", mapping={"device_id": "d1", "user_id": "u1", "expires_at": "2000000000"}
    )
    assert await lookup_redis_token(redis, "h1") == TokenBinding("d1", "u1", 2_000_000_000.0)


async def test_expiry_is_honoured_and_milliseconds_understood(redis: Redis) -> None:
    await redis.set("token:ms", b'{"device_id":"d1","user_id":"u","expires_at":2000000000000}')
    binding = await lookup_redis_token(redis, "ms")
    assert binding is not None
    assert binding.expires_at == 2_000_000_000.0
    assert binding_allows(binding, "d1", now=1_999_999_999.0)
    assert not binding_allows(binding, "d1", now=2_000_000_000.0)


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b'["device_id"]',
        b'{"user_id":"u"}',
        b'{"device_id":"  "}',
        b'{"device_id":7}',
        b'{"device_id":"d1","user_id":true}',
        b'{"device_id":"d1","expires_at":"soon"}',
        b'{"device_id":"d1","expires_at":[1]}',
    ],
)
async def test_malformed_binding_is_refused(redis: Redis, stored: bytes) -> None:
    await redis.set("token:bad", stored)
    assert await lookup_redis_token(redis, "bad") is None


async def test_unknown_or_absurd_token_is_refused(redis: Redis) -> None:
    assert await lookup_redis_token(redis, "missing") is None
    assert await lookup_redis_token(redis, "") is None
    await redis.set("token:" + "x" * 600, b'{"device_id":"d1"}')
    assert await lookup_redis_token(redis, "x" * 600) is None


async def test_unreachable_store_is_reported_without_the_token() -> None:
    r = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(TokenStoreUnavailable) as info:
            await lookup_redis_token(r, "secret-token-value", timeout_s=1.0)
    finally:
        await r.aclose()
    assert "secret-token-value" not in str(info.value)


async def test_sockets_reset_while_idle_are_retried_or_reported(redis_server: RedisServer) -> None:
    relay = ResettingRelay(redis_server.port)
    await relay.start()
    r = open_token_store(relay.url)
    try:
        await r.set("token:abc", b'{"device_id":"d1","user_id":"u1"}')
        relay.reset()  # the pooled socket dies with a TCP reset while idle
        assert await lookup_redis_token(r, "abc") == TokenBinding("d1", "u1", None)
        relay.reset()
        await redis_server.kill()  # and this time Redis is gone
        with pytest.raises(TokenStoreUnavailable):
            await lookup_redis_token(r, "abc", timeout_s=1.0)
    finally:
        await r.aclose()
        await relay.close()
