"""Device authentication at the handshake in every mode (docs/protocol.md §1.1): the right token
gets a session, a wrong one gets HTTP 401 JSON before the upgrade; an unreachable token store
is 503 (retry), not 401; tokens never appear in answers or logs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay.auth.tokens import mint
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device
from tests.relay.redis_server import (  # noqa: F401 (pytest finds the fixture by name)
    RedisServer,
    redis_server_fixture,
)

MAC = "66:9C:4B:DA:13:EA"
CANONICAL = "669C4BDA13EA"
OTHER_MAC = "66:9C:4B:DA:13:EB"
CLIENT_ID = "3f2a9c1e-7b64-4d0e-9a51-0c8e2d6b1f47"
SECRET = "hmac-secret-for-tests"
WS = "/xiaozhi/v1/"
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def refused(
    client: TestClient[Any, Any],
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    *,
    status: int = 401,
    error_type: str = "bad_token",
) -> str:
    """Attempt the upgrade; assert it is refused with a JSON error before switching
    protocols. Returns the body text."""
    h = {**UPGRADE, "Device-Id": MAC, "Client-Id": CLIENT_ID, **(headers or {})}
    resp = await client.get(WS, headers=h, params=params)
    text = await resp.text()
    assert resp.status == status, text
    assert "Upgrade" not in resp.headers
    assert resp.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(text)
    assert body["errorType"] == error_type
    assert body["error"]
    assert isinstance(body["hint"], str)
    return text


async def accepted(
    client: TestClient[Any, Any],
    token: str | None,
    *,
    device_id: str = MAC,
    client_id: str = CLIENT_ID,
) -> Device:
    """Connect with `Authorization: Bearer <token>` (no header when None) and say hello."""
    headers = {"Client-Id": client_id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    dev = await Device.connect(client, device_id=device_id, headers=headers)
    assert dev.session_id
    return dev


async def accepted_by_query(client: TestClient[Any, Any], params: dict[str, str]) -> Device:
    """The browser form: no headers at all, the handshake in the query string (§1.1)."""
    ws = await client.ws_connect(WS, params=params)
    dev = Device(ws, 1)
    await dev.send({"type": "hello"})
    reply = await dev.recv()
    assert reply["type"] == "hello"
    assert reply["session_id"]
    return dev


async def test_mode_none_accepts_without_a_token(make_relay: RelayFactory) -> None:
    client = await make_relay()
    await accepted(client, None)
    await accepted(client, "anything-at-all", device_id=OTHER_MAC)


async def test_tokens_mode(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"mode": "tokens", "tokens": ["tok-a", "tok-b"]})
    await accepted(client, "tok-b")
    # Firmware sends the stored token as is when it already contains no "Bearer " prefix.
    await Device.connect(client, device_id=OTHER_MAC, headers={"Authorization": "tok-a"})
    await refused(client)
    await refused(client, {"Authorization": "Bearer tok-c"})
    await refused(client, {"Authorization": "Bearer tok-a-longer"})
    await refused(client, {"Authorization": "Bearer tok"})
    await refused(client, {"Authorization": "Bearer "})


def hmac_relay(make_relay: RelayFactory, **extra: Any) -> Any:
    return make_relay(auth={"mode": "hmac", "hmac_secret": SECRET, **extra})


async def test_hmac_token_minted_over_ids_as_sent(make_relay: RelayFactory) -> None:
    client = await hmac_relay(make_relay)
    now = int(time.time())
    # xiaozhi-server signs the Device-Id exactly as the device sends it: with colons.
    await accepted(client, mint(SECRET, CLIENT_ID, MAC, now - 3600))
    # A token minted over the canonical id is accepted too.
    await accepted(client, mint(SECRET, CLIENT_ID, "669C4BDA13EB", now), device_id=OTHER_MAC)
    await refused(client, {"Authorization": f"Bearer {mint(SECRET, CLIENT_ID, OTHER_MAC, now)}"})


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda now: mint(SECRET, CLIENT_ID, OTHER_MAC, now), id="other-device"),
        pytest.param(lambda now: mint(SECRET, "another-client", MAC, now), id="other-client"),
        pytest.param(lambda now: mint("not-the-secret", CLIENT_ID, MAC, now), id="other-secret"),
        pytest.param(lambda now: mint(SECRET, CLIENT_ID, MAC, now - 7 * 86400), id="expired"),
        pytest.param(lambda now: mint(SECRET, CLIENT_ID, MAC, now + 3600), id="future"),
        pytest.param(lambda now: mint(SECRET, CLIENT_ID, MAC, now) + "x", id="tampered"),
        pytest.param(lambda now: mint(SECRET, CLIENT_ID, MAC, now).split(".")[0], id="no-ts"),
        pytest.param(lambda now: "not-a-token", id="garbage"),
    ],
)
async def test_hmac_refuses_wrong_tokens(make_relay: RelayFactory, make_token: Any) -> None:
    client = await hmac_relay(make_relay, hmac_max_age_s=86400)
    token = make_token(int(time.time()))
    text = await refused(client, {"Authorization": f"Bearer {token}"})
    assert token not in text


async def test_hmac_missing_token_is_refused(make_relay: RelayFactory) -> None:
    client = await hmac_relay(make_relay)
    await refused(client)


async def test_hmac_token_in_query_form(make_relay: RelayFactory) -> None:
    client = await hmac_relay(make_relay)
    token = mint(SECRET, CLIENT_ID, MAC, int(time.time()))
    await accepted_by_query(
        client, {"device-id": MAC, "client-id": CLIENT_ID, "authorization": token}
    )
    await accepted_by_query(
        client, {"device_id": MAC, "client_id": CLIENT_ID, "authorization": f"Bearer {token}"}
    )
    wrong = mint(SECRET, CLIENT_ID, OTHER_MAC, int(time.time()))
    await refused(
        client,
        params={"device-id": MAC, "client-id": CLIENT_ID, "authorization": wrong},
    )


async def test_tokens_mode_in_query_form(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"mode": "tokens", "tokens": ["q+tok/="]})
    await accepted_by_query(client, {"device-id": MAC, "authorization": "q+tok/="})
    with pytest.raises(WSServerHandshakeError) as caught:
        await client.ws_connect(WS, params={"device-id": MAC, "authorization": "q tok/="})
    assert caught.value.status == 401


async def store_token(redis_url: str, token: str, binding: dict[str, Any]) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.set(f"token:{token}", orjson.dumps(binding))
    finally:
        await r.aclose()


async def test_redis_tokens(make_relay: RelayFactory, redis_server: RedisServer) -> None:
    url = redis_server.url
    await store_token(url, "t-mine", {"device_id": MAC, "user_id": "u1"})
    await store_token(url, "t-canon", {"device_id": CANONICAL.lower(), "user_id": 7})
    await store_token(url, "t-other", {"device_id": OTHER_MAC, "user_id": "u2"})
    past = time.time() - 60
    await store_token(url, "t-old", {"device_id": MAC, "user_id": "u1", "expires_at": past})
    r = Redis.from_url(url)
    try:
        await r.hset("token:t-hash", mapping={"device_id": CANONICAL, "user_id": "u3"})
        await r.set("token:t-junk", b"not json")
    finally:
        await r.aclose()
    client = await make_relay(auth={"mode": "redis"}, redis={"url": url})

    await accepted(client, "t-mine")
    await accepted(client, "t-canon")  # bindings compare canonical ids
    await accepted(client, "t-hash")
    await accepted_by_query(client, {"device-id": MAC, "authorization": "t-mine"})
    for token in ("t-other", "t-old", "t-junk", "t-unknown"):
        text = await refused(client, {"Authorization": f"Bearer {token}"})
        assert token not in text
    await refused(client)


async def test_redis_down_is_503_not_401(
    make_relay: RelayFactory, redis_server: RedisServer
) -> None:
    await store_token(redis_server.url, "t-mine", {"device_id": MAC, "user_id": "u1"})
    client = await make_relay(auth={"mode": "redis"}, redis={"url": redis_server.url})
    await accepted(client, "t-mine")

    await redis_server.kill()
    loop = asyncio.get_running_loop()
    for token in ("t-mine", "t-unknown"):
        start = loop.time()
        text = await refused(
            client,
            {"Authorization": f"Bearer {token}"},
            status=503,
            error_type="token_store_unavailable",
        )
        assert loop.time() - start < 3.0  # bounded by the lookup timeout (2 s)
        assert token not in text

    await redis_server.restart()  # an empty store: the binding must be written again
    await store_token(redis_server.url, "t-mine", {"device_id": MAC, "user_id": "u1"})
    refusals: list[int] = []
    async with asyncio.timeout(5):
        while True:  # the relay's client reconnects on its next lookup
            try:
                await accepted(client, "t-mine")
                break
            except WSServerHandshakeError as exc:
                refusals.append(exc.status)
            await asyncio.sleep(0.05)
    assert set(refusals) <= {503}  # never "wrong token" while the store comes back
    await refused(client, {"Authorization": "Bearer t-unknown"})


async def test_allow_list_refuses_other_devices(make_relay: RelayFactory) -> None:
    client = await make_relay(auth={"allowed_devices": [CANONICAL, "kiosk-7"]})
    await accepted(client, None)  # sent as a MAC with colons: compared in canonical form
    await accepted(client, None, device_id="kiosk-7")
    await refused(client, {"Device-Id": OTHER_MAC}, error_type="device_not_allowed")
    await refused(client, {"Device-Id": "kiosk-8"}, error_type="device_not_allowed")


async def test_allow_list_applies_with_a_valid_token(make_relay: RelayFactory) -> None:
    client = await make_relay(
        auth={"mode": "tokens", "tokens": ["good"], "allowed_devices": [CANONICAL]}
    )
    await accepted(client, "good")
    text = await refused(
        client,
        {"Device-Id": OTHER_MAC, "Authorization": "Bearer good"},
        error_type="device_not_allowed",
    )
    assert "good" not in text


async def test_allow_list_entries_written_as_mac(make_relay: RelayFactory) -> None:
    # Operators copy the MAC as the device shows it; it must match the canonical id (§1.1).
    client = await make_relay(auth={"allowed_devices": [MAC.lower(), "66-9C-4B-DA-13-EB"]})
    await accepted(client, None)
    await accepted(client, None, device_id=OTHER_MAC)
    await refused(client, {"Device-Id": "66:9C:4B:DA:13:EC"}, error_type="device_not_allowed")


@pytest.mark.parametrize("mode", ["tokens", "hmac", "redis"])
async def test_tokens_never_reach_answers_or_logs(
    make_relay: RelayFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    good = {
        "tokens": "Tk-good-4c1f9e",
        "hmac": mint(SECRET, CLIENT_ID, MAC, int(time.time())),
        "redis": "Tk-redis-7d2a0b",
    }[mode]
    wrong = "Tk-wrong-93be51"
    auth: dict[str, Any] = {"mode": mode}
    if mode == "tokens":
        auth["tokens"] = [good]
    elif mode == "hmac":
        auth["hmac_secret"] = SECRET
    else:
        await store_token(redis_server.url, good, {"device_id": MAC, "user_id": "u"})
    client = await make_relay(auth=auth, redis={"url": redis_server.url})

    dev = await accepted(client, good)
    await dev.send({"type": "ping"})
    await dev.recv()
    texts = [await refused(client, {"Authorization": f"Bearer {wrong}"})]
    texts.append(await refused(client, params={"authorization": wrong}))
    if mode == "redis":
        await redis_server.kill()
        for token in (good, wrong):
            texts.append(
                await refused(
                    client,
                    {"Authorization": f"Bearer {token}"},
                    status=503,
                    error_type="token_store_unavailable",
                )
            )
    await dev.ws.close()
    await client.close()  # shutdown logging included

    # aiohttp's access log (on in the test server, off in `relay serve`) records request
    # lines, query strings included: it is not the relay's logging.
    fmt = logging.Formatter("%(name)s %(message)s")  # with tracebacks, where there are any
    relay_logs = [fmt.format(r) for r in caplog.records if r.name != "aiohttp.access"]
    assert relay_logs, "nothing was logged: the check would be empty"
    for secret in (good, wrong, SECRET):
        assert not [line for line in relay_logs if secret in line]
        assert not [t for t in texts if secret in t]
