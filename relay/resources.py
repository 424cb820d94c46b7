"""The app's resources, built once per application and reached through an `AppKey`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from bridges.business import BusinessTarget
from metrics.registry import Metrics
from protocol.audio_format import AudioFormat, downlink_for
from relay.auth.device import DeviceAuthenticator
from relay.auth.handshake import SpokenLanguages
from relay.cluster.base import Cluster
from relay.config.schema import Config


@dataclass(slots=True)
class Relay:
    """Everything a connection or an API call needs; one per application."""

    config: Config
    metrics: Metrics
    targets: dict[str, BusinessTarget]
    default_target: BusinessTarget | None
    device_targets: dict[str, BusinessTarget]
    cluster: Cluster
    authenticator: DeviceAuthenticator
    _synced: dict[tuple[str, str], int] = field(default_factory=dict)
    languages: SpokenLanguages = field(default_factory=SpokenLanguages)  # from OTA checks
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def sync_cluster_metrics(self) -> None:
        """Copy the cluster layer's operation and error counts into Prometheus counters."""
        for kind, counts in (("ops", self.cluster.ops), ("errors", self.cluster.errors)):
            metric = self.metrics.redis_ops if kind == "ops" else self.metrics.redis_errors
            for op, n in counts.items():
                before = self._synced.get((kind, op), 0)
                if n > before:
                    metric.labels(op).inc(n - before)
                    self._synced[(kind, op)] = n

    def target_for(self, device_id: str, agent_id: str = "") -> BusinessTarget | None:
        """Business choice (docs/protocol.md §2.5): agent id, device assignment, then default."""
        if agent_id and (t := self.targets.get(agent_id)) is not None:
            return t
        return self.device_targets.get(device_id, self.default_target)

    def downlink(self, uplink: AudioFormat) -> AudioFormat:
        """The downlink the relay declares and sends to a device that declared `uplink` (§1.2)."""
        tts = self.config.tts
        return downlink_for(uplink, tts.downlink_sample_rate, tts.frame_duration_ms)

    @staticmethod
    def uplink_format(declared: AudioFormat) -> AudioFormat | None:
        """The device's declared uplink when the relay can decode it, else None."""
        return None if declared.decode_problem() else declared


RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay", Relay)
