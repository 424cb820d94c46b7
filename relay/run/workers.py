"""Worker processes sharing one port: kept free of the app's heavy imports (onnxruntime,
pocketsphinx), so that the supervising process stays small."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from prometheus_client import multiprocess

from metrics.registry import MULTIPROC_ENV
from relay.config.load import WORKER_ENV


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket (SO_REUSEPORT lets worker processes share a port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def run_workers(argv: Sequence[str], workers: int, port: int) -> int:
    """Run `workers` relay processes on one port (SO_REUSEPORT); merge their metrics
    through prometheus-client's multiprocess mode; forward SIGTERM/SIGINT; exit 0 when
    all workers exited cleanly. `port` is free for them (the CLI has probed it)."""
    with tempfile.TemporaryDirectory(prefix="relay-metrics-") as metrics_dir:
        children: list[subprocess.Popen[bytes]] = []
        for i in range(workers):
            env = {**os.environ, WORKER_ENV: str(i), MULTIPROC_ENV: metrics_dir}
            cmd = [sys.executable, "-m", "relay", *argv, "--workers", "1", "--port", str(port)]
            children.append(subprocess.Popen(cmd, env=env))

        def forward(signum: int, _frame: object) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        codes = []
        for child in children:
            codes.append(child.wait())
            multiprocess.mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]
    failed = [c for c in codes if c != 0]
    return failed[0] if failed else 0
