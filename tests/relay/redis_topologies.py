"""Private Redis topologies beyond one server, for the cluster tests: a Redis Cluster of
3 primaries and 3 replicas (`redis-server --cluster-enabled yes`, joined by `redis-cli
--cluster create`), and a Sentinel set-up (a primary, a replica, three sentinels). Each is
started once per test session on free loopback ports and torn down at its end; a test
empties it first (`flush`). A primary can be killed to test failover; `heal` brings the
set-up back to full strength for the tests that follow."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.relay.redis_server import free_port, redis_binary

READY_S = 30.0  # a cluster joins in a few seconds; generous for a loaded machine
MASTER = "relaymaster"


def _wait(check: Callable[[], bool], what: str, timeout: float = READY_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Server:
    """One redis-server process (data node or sentinel) in its own directory."""

    def __init__(self, binary: str, directory: Path, extra: list[str]) -> None:
        self.binary, self.directory, self.extra = binary, directory, extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def command(self, *args: str) -> Any:
        """One command's raw answer."""
        return self.client().execute_command(*args)  # type: ignore[no-untyped-call]

    def cluster_info(self) -> dict[str, str]:
        raw = self.command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def start(self) -> None:
        args = [self.binary, *self.extra, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--logfile", "redis.log"]
        args += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(lambda: bool(self.client().ping()), f"redis-server on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class ClusterServers:
    """A Redis Cluster: 3 primaries, 3 replicas; `url` lists every node (seed nodes)."""

    def __init__(self, binary: str, directory: Path) -> None:
        conf = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        conf += ["--cluster-node-timeout", "1000"]  # a dead primary is replaced in ~2 s
        self.nodes = [Server(binary, directory / f"n{i}", conf) for i in range(6)]
        for n in self.nodes:  # the bus port (default: port + 10000, which may not exist)
            n.extra = [*n.extra, "--cluster-port", str(free_port())]
        self.url = ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(  # noqa: S603 - fixed arguments
            ["redis-cli", "--cluster", "create", *addresses]  # noqa: S607
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_S,
        )
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every live node says the cluster is ok and knows 3 primaries."""

        def ok() -> bool:
            for n in self.live():
                info = n.cluster_info()
                if info["cluster_state"] != "ok" or int(info["cluster_size"]) != 3:
                    return False
            return True

        _wait(ok, "the cluster to be ok")

    def live(self) -> list[Server]:
        return [n for n in self.nodes if n.proc is not None]

    def primaries(self) -> list[Server]:
        return [n for n in self.live() if n.client().info("replication")["role"] == "master"]

    def wait_replicated(self) -> None:
        """Until every replica has what its primary wrote (replication is asynchronous:
        a primary killed before that loses those writes until the nodes rebuild)."""

        def caught_up() -> bool:
            for p in self.primaries():
                info = p.client().info("replication")
                offsets = [v["offset"] for k, v in info.items() if k.startswith("slave")]
                if not offsets or any(o != info["master_repl_offset"] for o in offsets):
                    return False
            return True

        _wait(caught_up, "the replicas to catch up")

    def flush(self) -> None:
        for n in self.primaries():
            n.client().flushall()

    def primary_of(self, key: str) -> Server:
        """The primary that holds `key`'s slot."""
        slot = int(self.live()[0].command("CLUSTER", "KEYSLOT", key))
        for n in self.primaries():
            shards = n.command("CLUSTER", "SLOTS")
            mine = [(int(s[0]), int(s[1])) for s in shards if int(s[2][1]) == n.port]
            if any(lo <= slot <= hi for lo, hi in mine):
                return n
        raise AssertionError(f"no primary holds slot {slot}")

    def kill_primary_of(self, key: str) -> Server:
        """Kill the primary that holds `key`'s slot; its replica takes over."""
        n = self.primary_of(key)
        n.kill()
        return n

    def hand_over(self, primary: Server) -> Server:
        """A graceful failover (`CLUSTER FAILOVER` on its replica): no write lost, the
        cluster's epoch grows; the replica, now primary."""
        info = primary.client().info("replication")
        port = int(info["slave0"]["port"])
        replica = next(n for n in self.live() if n.port == port)
        replica.command("CLUSTER", "FAILOVER")
        _wait(lambda: replica.client().info("replication")["role"] == "master", "the hand-over")
        self.wait_ok()
        return replica

    def heal(self) -> None:
        """Restart killed nodes (they rejoin as replicas from their nodes.conf)."""
        for n in self.nodes:
            if n.proc is None:
                n.start()
        self.wait_ok()

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()


class SentinelServers:
    """A primary, its replica and three sentinels (quorum 2) that fail it over in ~2 s."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.primary = Server(binary, directory / "primary", [])
        self.replica = Server(binary, directory / "replica", [])
        self.sentinels: list[Server] = []
        self.directory = directory
        self.binary = binary
        self.url = ""

    def start(self) -> None:
        self.primary.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for i in range(3):
            d = self.directory / f"s{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            s = Server(self.binary, d, [str(conf), "--sentinel"])
            self.sentinels.append(s)
        for s in self.sentinels:
            s.start()
        self.url = ",".join(s.url for s in self.sentinels)
        self.wait_ok()

    def current(self) -> Server:
        """The data node the sentinels name primary now."""
        _, port = self.sentinels[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return next(n for n in (self.primary, self.replica) if n.port == int(port))

    def wait_ok(self) -> None:
        def ok() -> bool:
            p = self.current()
            info = p.client().info("replication")
            return bool(info["role"] == "master" and int(info["connected_slaves"]) >= 1)

        _wait(ok, "the sentinel set-up to have a primary with a replica")

    def flush(self) -> None:
        self.current().client().flushall()

    def wait_replicated(self) -> None:
        """Until the replica has what the primary wrote."""

        def caught_up() -> bool:
            info = self.current().client().info("replication")
            offsets = [v["offset"] for k, v in info.items() if k.startswith("slave")]
            return bool(offsets) and all(o == info["master_repl_offset"] for o in offsets)

        _wait(caught_up, "the replica to catch up")

    def heal(self) -> None:
        """Restart a killed data node as a replica of the current primary."""
        for n in (self.primary, self.replica):
            if n.proc is None:
                p = self.current()
                n.extra = ["--replicaof", "127.0.0.1", str(p.port)]
                n.start()
        self.wait_ok()

    def stop(self) -> None:
        for n in (*self.sentinels, self.primary, self.replica):
            n.kill()


def _binary() -> str:
    binary = redis_binary()
    if binary is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli needed (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A Redis Cluster for the whole session (empty it with `flush()` before use)."""
    servers = ClusterServers(_binary(), tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_sentinel_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """A Sentinel set-up for the whole session (empty it with `flush()` before use)."""
    servers = SentinelServers(_binary(), tmp_path_factory.mktemp("redis-sentinel"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
