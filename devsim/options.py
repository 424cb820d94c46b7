"""The simulator's command-line options, parsed once (docs/devsim.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["manual", "auto", "realtime"]


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, parsed once (defaults: `build_parser`)."""

    url: str
    device_id: str
    protocol: int
    token: str
    agent: str
    query_auth: bool
    pcm: bool
    mcp: bool
    stay: float
    say: str | None
    wav: str | None
    custom: str | None
    text_response: str | None
    text: str | None
    mode: Mode
    abort_after: float | None
    out: str | None
    json: bool
    verbose: bool
    timeout: float
    speed: float
    devices: int
    turns: int
    ramp_batch: int
    ramp_interval: float
    max_duration: float
