"""Every Prometheus metric of the relay, declared once; one `Metrics` per app (no globals)."""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def build_version() -> str:
    """The installed relay's version (pyproject.toml), or "unknown" when not installed."""
    try:
        return metadata.version("voice-relay")
    except metadata.PackageNotFoundError:
        return "unknown"


def python_version() -> str:
    """The running interpreter's version, e.g. 3.11.9."""
    return platform.python_version()


_PROCESS_METRICS = {
    "process_cpu_seconds": "CPU time (user and system) this relay process has used, seconds.",
    "process_resident_memory_bytes": "Resident memory of this relay process.",
    "process_open_fds": "Descriptors this relay process holds open (sockets included).",
}


SOURCES = ("device", "simulate")  # who a turn is for: a device, or POST /api/v1/simulate
OTHER_BUSINESS = "other"  # a business name that is not configured (bounded label values)
# The outcomes of a business request (protocol.errors.BusinessOutcome's values; this
# package imports nothing of ours, so they are named here and checked by the tests).
OUTCOMES = ("ok", "incomplete", "unreachable", "status", "content_type", "timeout", "cancelled")


@dataclass(frozen=True, slots=True)
class BusinessSeries:
    """One business's and one source's series of the business metrics."""

    requests: dict[str, Counter]  # by outcome
    duration: Histogram
    first_event: Histogram
    bad_events: Counter
    session_mismatch: Counter


class Metrics:
    """The relay's metrics on a private registry; label values come from small fixed sets."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self.connections_active = Gauge(
            "relay_connections_active",
            "Device WebSocket connections open now.",
            registry=r,
            multiprocess_mode="livesum",  # summed over the live worker processes
        )
        self.event_loop_tasks = Gauge(
            "relay_event_loop_tasks",
            "asyncio tasks alive in the relay's event loop (a leak shows as steady growth).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_opened = Counter(
            "relay_connections_opened_total", "Device connections accepted.", registry=r
        )
        self.connections_closed = Counter(
            "relay_connections_closed_total",
            "Device connections closed, by close code.",
            ["code"],
            registry=r,
        )
        self.handshake_rejected = Counter(
            "relay_handshake_rejected_total",
            "Device handshakes refused before the upgrade, by reason.",
            ["reason"],
            registry=r,
        )
        self.edge_refused = Counter(
            "relay_edge_refused_total",
            "Sockets and requests the edge refused or cut before any handler, by reason.",
            ["reason"],
            registry=r,
        )
        self.messages = Counter(
            "relay_messages_total",
            "Device text messages, by type and direction (in = from device).",
            ["type", "direction"],
            registry=r,
        )
        self.audio_frames = Counter(
            "relay_audio_frames_total",
            "Binary audio frames, by direction.",
            ["direction"],
            registry=r,
        )
        self.protocol_errors = Counter(
            "relay_protocol_errors_total",
            "Bad frames from devices, by error code.",
            ["code"],
            registry=r,
        )
        self.outbox_overflow = Counter(
            "relay_outbox_overflow_total",
            "Devices disconnected because they could not keep up with their outbox.",
            registry=r,
        )
        self._businesses: frozenset[str] = frozenset()
        self._business_series: dict[tuple[str, str], BusinessSeries] = {}
        self.business_requests = Counter(
            "relay_business_requests_total",
            "Business requests, by business, source (device, simulate) and outcome.",
            ["business", "source", "outcome"],
            registry=r,
        )
        self.business_duration = Histogram(
            "relay_business_request_duration_seconds",
            "Business request duration, from POST to end of stream, by business and source.",
            ["business", "source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.business_first_event = Histogram(
            "relay_business_first_event_seconds",
            "Time from POST to the first business event, by business and source.",
            ["business", "source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.business_bad_events = Counter(
            "relay_business_bad_events_total",
            "Business events skipped because their data is not a JSON object or is too large.",
            ["business", "source"],
            registry=r,
        )
        self.session_mismatch = Counter(
            "relay_session_mismatch_dropped_total",
            "Business events dropped because their session_id is not the request's (§2.3).",
            ["business", "source"],
            registry=r,
        )
        self.tts_errors = Counter(
            "relay_tts_errors_total", "Answers or sentences that failed to synthesise.", registry=r
        )
        self.audio_errors = Counter(
            "relay_audio_errors_total",
            "Uplink audio packets that could not be decoded (garbage Opus, bad PCM size).",
            registry=r,
        )
        self.audio_dropped = Counter(
            "relay_audio_dropped_total",
            "Uplink audio packets dropped, by reason.",
            ["reason"],
            registry=r,
        )
        self.vad_segments = Counter(
            "relay_vad_segments_total", "Utterances the VAD found in device audio.", registry=r
        )
        self.barge_ins = Counter(
            "relay_barge_ins_total",
            "Answers cut because the user spoke (realtime mode).",
            registry=r,
        )
        self.wake_words = Counter(
            "relay_wake_words_total", "listen detect messages naming a wake word.", registry=r
        )
        self.asr_latency = Histogram(
            "relay_asr_seconds",
            "From the end of an utterance to its text, by ASR provider.",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tts_latency = Histogram(
            "relay_tts_seconds",
            "Synthesis time of one sentence, by TTS provider.",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.speech_to_audio = Histogram(
            "relay_speech_end_to_first_audio_seconds",
            "From the end of the user's speech to the first answer audio frame sent.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.asr_early = Counter(
            "relay_asr_early_total",
            "Early recognitions begun at a pause in speech, by outcome: hit (the utterance "
            "ended there, that text used) or miss (speech resumed or was cut, discarded).",
            ["outcome"],
            registry=r,
        )
        self.provider_errors = Counter(
            "relay_provider_errors_total",
            "ASR/TTS provider failures, by kind (asr, tts), provider name and reason (timeout, "
            "rate_limited, auth, refused, connection, bad_answer, worker, other).",
            ["kind", "provider", "reason"],
            registry=r,
        )
        self.redis_ops = Counter(
            "relay_redis_operations_total",
            "Cluster-layer Redis operations, by operation.",
            ["op"],
            registry=r,
        )
        self.redis_errors = Counter(
            "relay_redis_errors_total",
            "Cluster-layer Redis operations that failed, by operation.",
            ["op"],
            registry=r,
        )
        self.push = Counter(
            "relay_push_total",
            "Pushes through the HTTP API, by result (delivered or the reason it was not).",
            ["result"],
            registry=r,
        )
        self.mcp_sessions = Counter(
            "relay_mcp_sessions_total",
            "MCP set-ups of devices (initialize, tools/list), by result: ready, unavailable.",
            ["result"],
            registry=r,
        )
        self.mcp_messages = Counter(
            "relay_mcp_messages_total",
            "Device MCP messages, by kind: reply, notification, late (after its timeout),"
            " unknown_id, or why it was malformed.",
            ["kind"],
            registry=r,
        )
        self.mcp_tools_dropped = Counter(
            "relay_mcp_tools_dropped_total",
            "Tools of device lists not kept, by reason: max_tools, max_bytes, invalid,"
            " duplicate, max_pages.",
            ["reason"],
            registry=r,
        )
        self.tool_calls = Counter(
            "relay_tool_calls_total",
            "Device tool calls, by origin (api, answer) and result (ok, device_error or the"
            " reason there was no answer).",
            ["via", "result"],
            registry=r,
        )
        self.tool_call_duration = Histogram(
            "relay_tool_call_seconds",
            "Device tool calls answered by the device, from request to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.message_bytes = Counter(
            "relay_message_bytes_total",
            "Bytes of device text messages and audio, by type and direction.",
            ["type", "direction"],
            registry=r,
        )
        self.pacing_lead = Histogram(
            "relay_pacing_lead_seconds",
            "Audio queued on the device beyond now when a frame is sent (docs/protocol.md §1.6).",
            buckets=(0.0, 0.06, 0.12, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0),
            registry=r,
        )
        self.tts_encode = Histogram(
            "relay_tts_encode_seconds",
            "Resampling and Opus encoding of synthesised speech, per executor job.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.tts_fallbacks = Counter(
            "relay_tts_fallbacks_total",
            "Answers whose tts_provider is not configured; spoken by the default provider.",
            registry=r,
        )
        self.build_info = Gauge(
            "relay_build_info",
            "Always 1: the relay's version and the Python running it.",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(build_version(), python_version()).set(1)
        # This process's CPU, memory and descriptors, as prometheus-client's ProcessCollector
        # reads them; gauges of our own so that with several workers each one shows (a `pid`
        # label, "liveall"), which the collector's own metrics cannot.
        self._process = ProcessCollector(registry=None)
        self.process = {
            family: Gauge(
                f"relay_{family}",
                doc,
                registry=r,
                multiprocess_mode="liveall",
            )
            for family, doc in _PROCESS_METRICS.items()
        }
        self.sample_process()

    def count_tasks(self) -> None:
        """Set `relay_event_loop_tasks` and the process gauges from the running loop and the
        process (at scrapes and sweeps)."""
        self.event_loop_tasks.set(len(asyncio.all_tasks()))
        self.sample_process()

    def sample_process(self) -> None:
        """Set the `relay_process_*` gauges from this process's /proc entries."""
        for family in self._process.collect():
            gauge = self.process.get(family.name)
            if gauge is not None and family.samples:
                gauge.set(family.samples[0].value)

    def message_counters(self, mtype: str, direction: str) -> tuple[Counter, Counter]:
        """The (messages, bytes) children for a type and direction, resolved once: the
        per-message cost is then two increments (hot path)."""
        key = (mtype, direction)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.messages.labels(mtype, direction),
                self.message_bytes.labels(mtype, direction),
            )
        return pair

    def name_businesses(self, names: Iterable[str]) -> None:
        """The configured business names, the only values of the `business` label (any
        other is counted as `other`); their series start at zero for both sources."""
        self._businesses = frozenset(names)
        for name in self._businesses:
            for source in SOURCES:
                self.business(name, source)

    def business(self, name: str, source: str) -> BusinessSeries:
        """The business metrics of one configured business and one source (`device`,
        `simulate`), resolved once: a turn then pays a few increments (hot path)."""
        label = name if name in self._businesses else OTHER_BUSINESS
        key = (label, source)
        series = self._business_series.get(key)
        if series is None:
            series = self._business_series[key] = BusinessSeries(
                {o: self.business_requests.labels(label, source, o) for o in OUTCOMES},
                self.business_duration.labels(label, source),
                self.business_first_event.labels(label, source),
                self.business_bad_events.labels(label, source),
                self.session_mismatch.labels(label, source),
            )
        return series

    def exposition(self) -> bytes:
        """The text format for `/metrics`; with several workers, merged over all of them."""
        if path := os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
