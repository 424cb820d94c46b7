"""The app's resources, built once per application and reached through an `AppKey`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asr_tts.audio import DownlinkFormat
from bridges.business import BusinessTarget
from metrics.registry import Metrics
from protocol.device import AudioParams
from relay.config import Config
from relay.turn import TurnDeps

if TYPE_CHECKING:
    from relay.ws import Connection


@dataclass(slots=True)
class Relay:
    """Everything a connection or an API call needs; one per application."""

    config: Config
    metrics: Metrics
    deps: TurnDeps
    targets: dict[str, BusinessTarget]
    default_target: BusinessTarget | None
    device_targets: dict[str, BusinessTarget]
    connections: dict[str, Connection] = field(default_factory=dict)
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def target_for(self, device_id: str, agent_id: str = "") -> BusinessTarget | None:
        """Business choice (PROTOCOL.md §2.5): agent id, then device assignment, then default."""
        if agent_id and (t := self.targets.get(agent_id)) is not None:
            return t
        return self.device_targets.get(device_id, self.default_target)

    def downlink(self, uplink: AudioParams) -> AudioParams:
        """The downlink the relay declares and sends (§1.2): Opus at the configured rate, or
        PCM at the device's own rate when the device declared PCM (browser clients)."""
        tts = self.config.tts
        if uplink.format == "pcm":
            return AudioParams(
                "pcm", uplink.sample_rate, 1, tts.frame_duration_ms, uplink.play_buffer_duration
            )
        return AudioParams(
            "opus", tts.downlink_sample_rate, 1, tts.frame_duration_ms, uplink.play_buffer_duration
        )

    @staticmethod
    def downlink_format(params: AudioParams) -> DownlinkFormat:
        """The encoder's view of declared downlink audio params."""
        return DownlinkFormat(
            params.format, params.sample_rate, params.channels, params.frame_duration
        )
