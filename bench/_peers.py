"""The servers a benchmark measures, as subprocesses on free loopback ports: the relay
(`python -m relay serve --config config.toml`), the reference business, any server with
/healthz. Each one is added to the caller's `children()` list before it is waited for, so
that it is stopped even when it never gets ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench._common import PYTHON, ROOT, Child, free_port, start_child, wait_http_ok, wait_tcp

RELAY = ("-m", "relay")
RELAY_SERVE = ("serve", "--config", "config.toml")


def start_server(
    started: list[Child],
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    port_flag: str = "--port",
    after: Sequence[str] = (),
    cwd: Path = ROOT,
) -> tuple[Child, int]:
    """`argv PORT_FLAG P AFTER…` in `cwd` on a free port P, once its /healthz answers 200."""
    port = free_port()
    child = start_child(name, [*argv, port_flag, str(port), *after], env=env, cwd=cwd)
    started.append(child)
    wait_http_ok(child, f"http://127.0.0.1:{port}/healthz")
    return child, port


def relay_env(
    business_port: int | None = None, idle_timeout_s: str | None = None
) -> dict[str, str]:
    """The relay's settings in every benchmark: its business on `business_port` (none given:
    a free port, for benchmarks that make no business request, where the URL only has to be
    valid), logs at WARNING, and the idle timeout when one is given."""
    port = free_port() if business_port is None else business_port
    env = {
        "RELAY__BUSINESS__0__URL": f"http://127.0.0.1:{port}/chat",
        "RELAY__LOG__LEVEL": "WARNING",
    }
    if idle_timeout_s is not None:
        env["RELAY__SERVER__IDLE_TIMEOUT_S"] = idle_timeout_s
    return env


def start_relay(
    started: list[Child],
    name: str,
    env: Mapping[str, str],
    *,
    launcher: Sequence[str] = RELAY,
    after: Sequence[str] = (),
    cwd: Path = ROOT,
) -> tuple[Child, int]:
    """The relay on a free port, ready; `launcher` runs it (e.g. under bench._probe); `cwd`
    holds the code it runs (another revision's tree, say)."""
    argv = [PYTHON, *launcher, *RELAY_SERVE]
    return start_server(started, name, argv, env, after=after, cwd=cwd)


def start_business(started: list[Child], name: str) -> tuple[Child, int]:
    """The reference business (examples/business_service.py) on a free port, accepting."""
    port = free_port()
    child = start_child(name, [PYTHON, "examples/business_service.py", "--port", str(port)])
    started.append(child)
    wait_tcp(child, port)
    return child, port


def device_url(port: int) -> str:
    """The device WebSocket endpoint of a relay on loopback `port` (docs/protocol.md §1.1)."""
    return f"ws://127.0.0.1:{port}/xiaozhi/v1/"
