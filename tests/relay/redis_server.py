"""A private, real redis-server for tests: a free loopback port, no persistence, a temp dir;
it can be killed and restarted on the same port, or frozen and thawed, to test outages; and
a TCP relay in front of it that can reset every connection, as a dying host does."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

READY_TIMEOUT_S = 5.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on `port`; `kill()` and `restart()` simulate an outage."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), "--logfile", "redis.log"]
        self._proc = await asyncio.create_subprocess_exec(
            self.binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not await self._pong():
                if self._proc.returncode is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
                await asyncio.sleep(0.02)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return await reader.readline() == b"+PONG\r\n"
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def kill(self) -> None:
        """SIGKILL the server (its data is gone: nothing is persisted) and reap it."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets and data but answers nothing."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server answers again, starting with what piled up meanwhile."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Start a fresh, empty server on the same port."""
        await self.kill()
        await self.start()


class ResettingRelay:
    """A TCP relay on a loopback port in front of `target_port`; `reset()` ends every relayed
    connection with a TCP reset (RST), as a host does for a process killed with data in
    flight: the client's pooled sockets die while idle, not with a clean close."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.transport.abort()
            self._clients.discard(writer)
            self._tasks.discard(task)

    def reset(self) -> None:
        """End every client connection with RST (SO_LINGER 0, then close)."""
        for writer in self._clients:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._tasks:  # each ends once its sockets are gone
            await asyncio.wait(self._tasks, timeout=READY_TIMEOUT_S)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def redis_binary() -> str | None:
    """Where redis-server is, if installed."""
    fallback = Path("/usr/bin/redis-server")
    return shutil.which("redis-server") or (str(fallback) if fallback.exists() else None)


async def start_redis(directory: Path) -> RedisServer:
    """A started server in `directory`; skips the test loudly when there is no binary."""
    binary = redis_binary()
    if binary is None:
        pytest.skip(
            "redis-server not installed: the cluster/token tests need a real Redis "
            "(apt-get install redis-server)"
        )
    server = RedisServer(binary, directory)
    await server.start()
    return server


@contextlib.asynccontextmanager
async def running_redis(directory: Path) -> AsyncIterator[RedisServer]:
    """A server for the duration of the block, killed afterwards."""
    server = await start_redis(directory)
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(name="redis_server")
async def redis_server_fixture(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """`redis_server`: a private redis-server for one test (skips when the binary is absent).
    Import `redis_server_fixture` into a test module to use it."""
    async with running_redis(tmp_path) as server:
        yield server
