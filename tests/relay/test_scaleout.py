"""Scale-out end to end: real `python -m relay serve` processes sharing one private
redis-server (README.md "Many processes and machines"): push through any node, cluster-wide
presence, replacement across nodes (close 4001, docs/protocol.md §1.7), a Redis outage that
leaves local traffic alone and heals itself, and `--workers` where each worker is a node."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from tests.relay.fakes import Device, FakeBusiness, is_end, is_tts_stop
from tests.relay.redis_server import (  # noqa: F401 (pytest finds the fixture by name)
    RedisServer,
    redis_server_fixture,
    running_redis,
)
from tests.relay.redis_topologies import (  # noqa: F401 (pytest finds the fixtures by name)
    MASTER,
    redis_cluster_servers,
    redis_sentinel_servers,
)
from tests.relay.test_cli import LIGHT_SPEECH, ROOT, clean_env, stop, wait_http
from tests.relay.test_cluster import inbox_gone
from tests.relay.test_push_api import COMMAND_TEXT, NOTIFY_HELLO, recv_raw
from tests.relay.test_simulate import closed_port

MAC = "66:9C:4B:DA:13:EA"
CANONICAL = "669C4BDA13EA"
PUSH_TIMEOUT_S = 2.0
RECOVERY_S = 12.0  # supervisor backoff (≤ 5 s) + resubscribe + rebuild, with margin


@dataclass
class RelayProcess:
    """One relay process (or a `--workers` parent) and where its stderr goes."""

    name: str
    port: int
    proc: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{self.base}/xiaozhi/v1/"

    async def stop(self) -> int:
        """SIGTERM (SIGKILL if it hangs), close its log; the exit code."""
        code = await stop(self.proc)
        self.log_file.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def start_relay(
    name: str,
    tmp_path: Path,
    redis_url: str,
    business: TestServer,
    *,
    node_id: str | None = None,
    workers: int = 1,
    mode: str = "single",
    master: str = "",
) -> RelayProcess:
    port = closed_port()
    env = clean_env(
        RELAY__REDIS__URL=redis_url,
        RELAY__REDIS__MODE=mode,
        RELAY__REDIS__MASTER_NAME=master,
        RELAY__REDIS__PRESENCE_TTL_S="3",
        RELAY__REDIS__HEARTBEAT_S="1",
        RELAY__REDIS__PUSH_TIMEOUT_S=str(PUSH_TIMEOUT_S),
        RELAY__BUSINESS__0__URL=str(business.make_url("/chat")),
        # The cluster is under test, not the voice: espeak-ng and pocketsphinx, so that no
        # relay of the pair loads Kokoro's or Whisper's model (`relay serve` warms them up).
        **LIGHT_SPEECH,
    )
    if node_id is not None:
        env["RELAY__REDIS__NODE_ID"] = node_id
    log_path = tmp_path / f"relay-{name}.log"
    log_file = _open_log(log_path)
    args = ["serve", "--config", "config.toml", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )
    return RelayProcess(name, port, proc, log_path, log_file)


async def connect(
    http: aiohttp.ClientSession,
    relay: RelayProcess,
    device_id: str,
    hello: dict[str, Any] | None = None,
    *,
    seen_by: RelayProcess | None = None,
) -> Device:
    """A device on `relay` (a new TCP connection), past its hello; with `seen_by`, also
    until that node sees it there (presence is written just after the hello)."""
    ws = await http.ws_connect(relay.ws_url, headers={"Device-Id": device_id, "Client-Id": "c"})
    dev = Device(ws, 1)
    await dev.send(hello or {"type": "hello", "version": 1, "transport": "websocket"})
    reply = await dev.recv()
    assert reply["type"] == "hello"
    dev.session_id = reply["session_id"]
    dev.hello = reply
    if seen_by is not None:
        await seen_on(http, seen_by, device_id, relay.name)
    return dev


async def seen_on(
    http: aiohttp.ClientSession, relay: RelayProcess, device_id: str, node: str
) -> None:
    """Poll `relay` until it locates the device on `node`."""
    async with asyncio.timeout(5.0):
        while True:
            found = await presence(http, relay, device_id)
            if found is not None and found["node"] == node:
                return
            await asyncio.sleep(0.02)


async def push(
    http: aiohttp.ClientSession, relay: RelayProcess, device_id: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{relay.base}/api/v1/devices/{device_id}/messages",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        answer = orjson.loads(await resp.read())
        assert isinstance(answer, dict)
        return resp.status, answer


async def presence(
    http: aiohttp.ClientSession, relay: RelayProcess, device_id: str
) -> dict[str, Any] | None:
    async with http.get(f"{relay.base}/api/v1/devices/{device_id}") as resp:
        if resp.status == 404:
            return None
        assert resp.status == 200, await resp.text()
        found: dict[str, Any] = await resp.json()
        return found


async def list_all(http: aiohttp.ClientSession, relay: RelayProcess) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(20):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{relay.base}/api/v1/devices", params=params) as resp:
            assert resp.status == 200
            page = await resp.json()
        devices += page["devices"]
        cursor = page["next_cursor"]
        if cursor is None:
            return devices
    raise AssertionError("the listing never ends")


async def closed_with(dev: Device, timeout: float = 5.0) -> int | None:
    """Read until the relay closes the socket; its close code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await dev.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                code: int | None = dev.ws.close_code
                return code


async def stop_all(relays: tuple[RelayProcess, ...], devices: tuple[Device, ...]) -> None:
    """SIGTERM every relay at once: connected devices are closed with 1001 (going away),
    and each relay exits 0 without a traceback."""
    stopping = asyncio.gather(*(r.stop() for r in relays))
    closes = await asyncio.gather(*(closed_with(d, 10) for d in devices))
    codes = await stopping
    assert closes == [1001] * len(devices)
    for relay, code in zip(relays, codes, strict=True):
        log = relay.log()
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]


@dataclass
class Pair:
    a: RelayProcess
    b: RelayProcess
    http: aiohttp.ClientSession
    fake: FakeBusiness


@pytest.fixture
async def pair(
    redis_server: RedisServer, business: tuple[FakeBusiness, TestServer], tmp_path: Path
) -> AsyncIterator[Pair]:
    """Relays "a" and "b" on one Redis, both answering /healthz (connected to Redis)."""
    fake, server = business
    a, b = await asyncio.gather(
        start_relay("a", tmp_path, redis_server.url, server, node_id="a"),
        start_relay("b", tmp_path, redis_server.url, server, node_id="b"),
    )
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                wait_http(http, f"{a.base}/healthz", a.proc),
                wait_http(http, f"{b.base}/healthz", b.proc),
            )
            yield Pair(a, b, http, fake)
    finally:
        for relay in (a, b):
            await relay.stop()  # a no-op for one the test stopped already


@pytest.fixture(params=["single", "cluster", "sentinel"])
async def any_pair(
    request: pytest.FixtureRequest, business: tuple[FakeBusiness, TestServer], tmp_path: Path
) -> AsyncIterator[Pair]:
    """Relays "a" and "b" on one Redis, a Redis Cluster, or a Sentinel-managed primary."""
    mode, master = request.param, ""
    async with contextlib.AsyncExitStack() as stack:
        if mode == "single":
            url = (await stack.enter_async_context(running_redis(tmp_path))).url
        else:
            servers = request.getfixturevalue(f"redis_{mode}_servers")
            servers.heal()
            servers.flush()
            url, master = servers.url, (MASTER if mode == "sentinel" else "")
        async for pair in _pair_on(url, business, tmp_path, mode, master):
            yield pair


async def _pair_on(
    url: str, business: tuple[FakeBusiness, TestServer], tmp_path: Path, mode: str, master: str
) -> AsyncIterator[Pair]:
    fake, server = business
    a, b = await asyncio.gather(
        start_relay("a", tmp_path, url, server, node_id="a", mode=mode, master=master),
        start_relay("b", tmp_path, url, server, node_id="b", mode=mode, master=master),
    )
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                wait_http(http, f"{a.base}/healthz", a.proc),
                wait_http(http, f"{b.base}/healthz", b.proc),
            )
            yield Pair(a, b, http, fake)
    finally:
        for relay in (a, b):
            await relay.stop()


async def test_push_through_either_node_reaches_the_device(any_pair: Pair) -> None:
    a, b, http = any_pair.a, any_pair.b, any_pair.http
    dev = await connect(http, a, MAC, seen_by=b)

    status, answer = await push(http, b, MAC, b'{"command":' + COMMAND_TEXT.encode() + b"}")
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    raw = await recv_raw(dev)
    assert '"business_response":' + COMMAND_TEXT + ',"timestamp":' in raw
    assert '"original_request_type":"push"' in raw

    body = {"speak": "Hello there.", "voice": {"speed_ratio": 1.2}}
    status, answer = await push(http, b, CANONICAL, orjson.dumps(body))
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    msgs = await dev.recv_until(is_tts_stop)
    assert [m.get("state") for m in msgs] == ["start", "sentence_start", "stop"]
    assert msgs[1]["text"] == "Hello there."
    assert dev.audio, "no speech audio"

    listed = {d["device_id"]: d for d in await list_all(http, b)}
    assert set(listed) == {CANONICAL}
    assert listed[CANONICAL]["node"] == "a"
    assert listed[CANONICAL]["session_id"] == dev.session_id
    found = await presence(http, b, MAC)
    assert found is not None
    assert (found["node"], found["session_id"]) == ("a", dev.session_id)

    status, answer = await push(http, b, "nobody", b'{"speak":"hi"}')
    assert (status, answer["delivered"], answer["reason"]) == (404, False, "offline")

    await stop_all((a,), (dev,))
    # A node that stops cleanly withdraws its devices at once, not after the TTL (3 s).
    assert await presence(http, b, MAC) is None
    assert await list_all(http, b) == []
    status, answer = await push(http, b, MAC, b'{"speak":"hi"}')
    assert (status, answer["reason"]) == (404, "offline")
    await stop_all((b,), ())


async def test_device_messages_through_the_other_node(pair: Pair) -> None:
    a, b, http = pair.a, pair.b, pair.http
    plain = await connect(http, a, MAC, seen_by=b)
    notified = await connect(http, a, "dev-notify", NOTIFY_HELLO, seen_by=b)

    body = b'{"device":{"session_id":"forged","type":"llm","emotion":"thinking","n":1.50}}'
    status, answer = await push(http, b, MAC, body)
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert await recv_raw(plain) == (
        f'{{"session_id":"{plain.session_id}","type":"llm","emotion":"thinking","n":1.50}}'
    )

    # The holding node knows what the device declared; its reason comes back as it is.
    notify = b'{"device":{"type":"notify","event":"config_updated"}}'
    status, answer = await push(http, b, MAC, notify)
    assert status == 409, answer
    assert (answer["delivered"], answer["reason"], answer["node"]) == (False, "not_supported", "a")
    assert "features.notify.config_updated" in answer["hint"]
    status, answer = await push(http, b, "dev-notify", notify)
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert orjson.loads(await recv_raw(notified)) == {
        "session_id": notified.session_id,
        "type": "notify",
        "event": "config_updated",
    }

    status, answer = await push(http, b, MAC, b'{"device":{"type":"hello"}}')
    assert (status, answer["errorType"]) == (400, "bad_request")
    await plain.send({"type": "ping"})
    assert await plain.recv() == {"type": "pong"}  # neither refused push reached the device
    await stop_all((a, b), (plain, notified))


# Sentinel mode runs the single-Redis scripts through another client: the push test above
# covers it end to end, and tests/relay/test_cluster_modes.py its replacement.
@pytest.mark.parametrize("any_pair", ["single", "cluster"], indirect=True)
async def test_reconnect_on_another_node_replaces_the_old_connection(any_pair: Pair) -> None:
    a, b, http = any_pair.a, any_pair.b, any_pair.http
    old = await connect(http, a, MAC, seen_by=b)
    new = await connect(http, b, MAC)
    assert await closed_with(old) == 4001

    for relay in (a, b):
        found = await presence(http, relay, MAC)
        assert found is not None
        assert (found["node"], found["session_id"]) == ("b", new.session_id)
    await asyncio.sleep(1.5)  # past a heartbeat of each node: "a" must not take it back
    found = await presence(http, a, MAC)
    assert found is not None
    assert (found["node"], found["session_id"]) == ("b", new.session_id)

    status, answer = await push(http, a, MAC, b'{"command":{"event":"message","n":2}}')
    assert (status, answer) == (200, {"delivered": True, "node": "b"})
    assert '"business_response":{"event":"message","n":2}' in await recv_raw(new)
    await stop_all((a, b), (new,))


async def custom_round_trip(dev: Device, marker: int) -> None:
    """A pass-through request from the device answered by the business (§2.1, §2.4)."""
    payload = {"type": "report", "details": {"session_id": dev.session_id, "marker": marker}}
    await dev.send({"session_id": dev.session_id, "type": "custom", "payload": payload})
    msgs = await dev.recv_until(is_end, timeout=5)
    responses = [m["payload"]["business_response"] for m in msgs]
    assert [r["event"] for r in responses] == ["message", "message_end"]
    assert responses[0]["details"]["echo"]["details"]["marker"] == marker


async def test_redis_outage_keeps_local_traffic_and_heals(
    pair: Pair, redis_server: RedisServer
) -> None:
    a, b, http = pair.a, pair.b, pair.http
    dev = await connect(http, a, MAC, seen_by=b)
    found = await presence(http, b, MAC)
    assert found is not None
    assert found["node"] == "a"

    await redis_server.kill()
    await custom_round_trip(dev, 1)  # device ⇄ business does not need Redis

    loop = asyncio.get_running_loop()
    start = loop.time()
    status, answer = await push(http, b, MAC, b'{"command":{"event":"message"}}')
    assert loop.time() - start < PUSH_TIMEOUT_S + 1.0
    assert status == 503, answer
    assert (answer["delivered"], answer["reason"]) == (False, "redis_unavailable")

    status, answer = await push(http, a, MAC, b'{"command":{"event":"message","n":3}}')
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert '"business_response":{"event":"message","n":3}' in await recv_raw(dev)
    late = await connect(http, a, "dev-late")  # connects while Redis is down
    await custom_round_trip(late, 2)
    # A lists what it holds, and says that this is not the whole cluster.
    async with http.get(f"{a.base}/api/v1/devices") as resp:
        assert resp.status == 200
        listing = await resp.json()
    assert [d["device_id"] for d in listing["devices"]] == [CANONICAL, "dev-late"]
    assert listing["partial"] is True
    assert "hint" in listing

    await redis_server.restart()  # empty: presence must be rebuilt from the connections
    async with asyncio.timeout(RECOVERY_S):
        while True:
            seen = {d["device_id"]: d["node"] for d in await list_all(http, b)}
            if seen == {CANONICAL: "a", "dev-late": "a"}:
                break
            await asyncio.sleep(0.1)
    found = await presence(http, b, MAC)
    assert found is not None
    assert (found["node"], found["session_id"]) == ("a", dev.session_id)

    status, answer = await push(http, b, MAC, b'{"command":{"event":"message","n":4}}')
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert '"business_response":{"event":"message","n":4}' in await recv_raw(dev)
    await custom_round_trip(dev, 3)
    await stop_all((a, b), (dev, late))


async def test_reconnect_during_outage_is_settled_when_redis_returns(
    pair: Pair, redis_server: RedisServer
) -> None:
    a, b, http = pair.a, pair.b, pair.http
    old = await connect(http, a, MAC, seen_by=b)
    await redis_server.kill()
    await asyncio.sleep(0.2)  # both nodes notice (their subscriptions drop)
    new = await connect(http, b, MAC)  # no cross-node word possible: "a" keeps the old one

    await redis_server.restart()
    # Both nodes rebuild presence from their connections; the newer connection wins and
    # the older one is replaced (4001), whichever node rebuilds first.
    assert await closed_with(old, RECOVERY_S) == 4001
    async with asyncio.timeout(RECOVERY_S):
        while True:
            found = [await presence(http, relay, MAC) for relay in (a, b)]
            if all(f is not None and f["node"] == "b" for f in found):
                break
            await asyncio.sleep(0.1)
    assert found[0] is not None
    assert found[0]["session_id"] == new.session_id
    status, answer = await push(http, a, MAC, b'{"command":{"event":"message","n":6}}')
    assert (status, answer) == (200, {"delivered": True, "node": "b"})
    assert '"business_response":{"event":"message","n":6}' in await recv_raw(new)

    await redis_server.kill()  # shutting down while Redis is away is still clean
    await stop_all((a, b), (new,))


async def readiness(http: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, Any]:
    async with http.get(f"{relay.base}/readyz") as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_frozen_redis_does_not_hold_hellos_back(
    pair: Pair, redis_server: RedisServer
) -> None:
    a, b, http = pair.a, pair.b, pair.http
    old = await connect(http, b, MAC, seen_by=a)
    assert (await readiness(http, a))["status"] == "ready"
    redis_server.pause()  # alive and connected, answering nothing
    loop = asyncio.get_running_loop()

    async def timed(device_id: str) -> tuple[Device, float]:
        start = loop.time()
        dev = await connect(http, a, device_id)
        return dev, loop.time() - start

    try:
        ids = [f"frozen-{i}" for i in range(8)]
        timed_devices = await asyncio.gather(*(timed(d) for d in ids), timed(MAC))
        waits = sorted(t for _, t in timed_devices)
        # Each used to queue behind the one before for a 2 s timeout: 2, 4 ... 18 s.
        assert waits[-1] < 1.5, waits
        async with asyncio.timeout(8.0):  # the first claim times out after 2 s
            while (ready := await readiness(http, a))["status"] != "degraded":
                await asyncio.sleep(0.1)
        assert ready["reason"] == "redis_unavailable", ready
        devices = [dev for dev, _ in timed_devices]
        await custom_round_trip(devices[0], 7)  # talking needs no Redis
    finally:
        redis_server.resume()

    # Redis answers again: the claims land, and the old connection on "b" is replaced.
    assert await closed_with(old, RECOVERY_S) == 4001
    async with asyncio.timeout(RECOVERY_S):
        while {d["device_id"]: d["node"] for d in await list_all(http, b)} != {
            d: "a" for d in (*ids, CANONICAL)
        }:
            await asyncio.sleep(0.1)
        while (await readiness(http, a))["status"] != "ready":
            await asyncio.sleep(0.1)
    status, answer = await push(http, b, "frozen-3", b'{"command":{"event":"message","n":8}}')
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert '"business_response":{"event":"message","n":8}' in await recv_raw(devices[3])
    status, answer = await push(http, b, MAC, b'{"command":{"event":"message","n":9}}')
    assert (status, answer) == (200, {"delivered": True, "node": "a"})
    assert '"business_response":{"event":"message","n":9}' in await recv_raw(devices[-1])
    await stop_all((a, b), tuple(devices))


async def test_unresponsive_or_dead_node(pair: Pair, redis_server: RedisServer) -> None:
    a, b, http = pair.a, pair.b, pair.http
    dev = await connect(http, a, MAC, seen_by=b)
    loop = asyncio.get_running_loop()

    a.proc.send_signal(signal.SIGSTOP)  # alive and subscribed, but never answers
    try:
        start = loop.time()
        status, answer = await push(http, b, MAC, b'{"command":{"event":"message","n":5}}')
        elapsed = loop.time() - start
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert status == 504, answer
    assert (answer["delivered"], answer["reason"], answer["node"]) == (False, "timeout", "a")
    assert PUSH_TIMEOUT_S - 0.1 <= elapsed < PUSH_TIMEOUT_S + 2.0
    # The hint said it may still arrive: the node delivers it once it runs again.
    assert '"business_response":{"event":"message","n":5}' in await recv_raw(dev)

    a.proc.kill()  # a crash: no unregister, presence expires by its TTL (3 s)
    await a.proc.wait()
    # Redis notices the dead socket on its own schedule; until then a publish counts "a".
    raw = Redis.from_url(redis_server.url)
    try:
        await inbox_gone(raw, "a")
    finally:
        await raw.aclose()
    start = loop.time()
    status, answer = await push(http, b, MAC, b'{"command":{"event":"message"}}')
    assert loop.time() - start < PUSH_TIMEOUT_S - 0.5  # no ack awaited: nobody listens
    assert (status, answer["delivered"], answer["reason"]) == (404, False, "offline")
    async with asyncio.timeout(3 + 2):
        while await presence(http, b, MAC) is not None:
            await asyncio.sleep(0.1)
    assert await list_all(http, b) == []
    await stop_all((b,), ())


@pytest.mark.parametrize(
    "node_id",
    [
        pytest.param(None, id="default-node-ids"),
        pytest.param("w", id="configured-node-id"),
    ],
)
async def test_workers_are_nodes_of_the_cluster(
    redis_server: RedisServer,
    business: tuple[FakeBusiness, TestServer],
    tmp_path: Path,
    node_id: str | None,
) -> None:
    _fake, server = business
    relay = await start_relay(
        "workers", tmp_path, redis_server.url, server, node_id=node_id, workers=2
    )
    # Every API request on a new TCP connection: the kernel picks a worker each time.
    fresh = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=fresh) as api:
            await wait_http(http, f"{relay.base}/healthz", relay.proc)
            pids: set[str] = set()
            async with asyncio.timeout(30):  # both workers listening before devices connect
                while len(pids) < 2:
                    async with api.get(f"{relay.base}/healthz") as resp:
                        pids.add(resp.headers["X-Relay-Worker"])
            devices: dict[str, Device] = {}
            async with asyncio.timeout(20):
                while True:
                    batch: dict[str, Device] = {}
                    for _ in range(6):  # each device is a new TCP connection too
                        device_id = f"w{len(devices) + len(batch):02d}"
                        batch[device_id] = await connect(http, relay, device_id)
                        while await presence(api, relay, device_id) is None:
                            await asyncio.sleep(0.02)  # its presence lands just after hello
                    devices.update(batch)
                    # Whichever worker takes the push, it reaches the device on either one.
                    for device_id, dev in batch.items():
                        body = orjson.dumps({"command": {"event": "message", "to": device_id}})
                        status, answer = await push(api, relay, device_id, body)
                        assert (status, answer["delivered"]) == (200, True), (device_id, answer)
                        assert f'"to":"{device_id}"' in await recv_raw(dev)
                    listed = await list_all(api, relay)
                    assert {d["device_id"] for d in listed} == set(devices)
                    nodes = {d["node"] for d in listed}
                    if len(nodes) == 2:
                        break
                    assert len(devices) < 36, f"every device on one node: {nodes}"
            if node_id is not None:  # still recognisable as the configured node
                assert all(n.startswith(node_id) for n in nodes), nodes
            for dev in devices.values():
                await dev.ws.close()
    finally:
        code = await relay.stop()
    assert code == 0, relay.log()[-3000:]
    assert "Traceback" not in relay.log()
