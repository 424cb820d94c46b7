"""The configuration's shape: one frozen dataclass per table, defaults in the fields
(relay/config/load.py reads and checks a file against it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import (
    Annotated,
    Literal,
)

from bridges.business import BusinessTarget
from protocol.device import WAKE_WORDS, DetectRules

SignedInt = Annotated[int, "signed"]  # an int key that may be negative (others may not)
ZeroOk = Annotated[float, "zero allowed"]  # a float key that may be 0 (others may not)
# A credential sent in an HTTP header (`Authorization: Bearer …`) or compared with one: visible
# ASCII only, "" = none (relay/config/load.py checks it; a list of them may not hold "").
Token = Annotated[str, "token"]
# A key the relay signs or checks with (HMAC): printable text, "" = none.
Secret = Annotated[str, "secret"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


# The providers `[tts] provider` and `[asr] provider` may name.
TTSName = Literal["embedded", "espeak", "openai", "huoshan", "aliyun", "tencent", "dashscope"]
ASRName = Literal[
    "embedded", "pocketsphinx", "openai", "volcengine", "aliyun", "tencent", "dashscope"
]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """`[server]`: listening socket and per-connection limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 180.0  # docs/protocol.md §1.7
    max_message_bytes: int = 64 * 1024
    outbox_max: int = 512
    max_passthrough_per_session: int = 4
    drain_timeout_s: float = 30.0
    gc_freeze: bool = True  # startup objects leave the collector's view (docs/performance.md)
    gc_gen0_threshold: int = 10000  # 0 keeps Python's default (700)
    check_origin: bool = False  # refuse device WebSockets from pages not in [ota] cors_origins
    # The edge (relay/edge.py): every accepted socket, before aiohttp and before any auth.
    request_head_timeout_s: float = 10.0  # a request head not complete by then: 408, closed
    request_body_timeout_s: float = 30.0  # a request body not complete by then: 408, closed
    keepalive_timeout_s: float = 75.0  # an idle kept-alive HTTP connection is closed after this
    max_connections: int = 0  # sockets at once, device WebSockets included; 0 = auto (fd limit / 2)
    max_http_per_address: int = 256  # sockets from one address that are not device WebSockets
    probe_reserve: int = 8  # sockets beyond max_connections kept for /healthz, /readyz, /metrics


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """`[auth]`: how devices authenticate at the handshake."""

    mode: Literal["none", "tokens", "hmac", "redis"] = "none"
    tokens: tuple[Token, ...] = field(default=(), repr=False)  # mode "tokens"
    allowed_devices: tuple[str, ...] = ()  # empty = every device id
    hmac_secret: Secret = field(default="", repr=False)  # mode "hmac": xiaozhi-compatible
    hmac_max_age_s: float = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class BusinessConfig:
    """`[[business]]`: one business service (docs/protocol.md §2.5)."""

    name: str
    url: str
    token: Token = field(default="", repr=False)
    signing_secret: Secret = field(default="", repr=False)  # signs every request (§2.1)
    session_check: Literal["strict", "lenient"] = "strict"
    connect_timeout_s: float = 3.0
    first_event_timeout_s: float = 15.0
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 300.0
    keepalive_timeout_s: float = 4.0  # idle pooled connections to it are closed after this
    devices: tuple[str, ...] = ()
    device_tools: bool = False  # gets the device's tools and may call them (§3.3)

    def target(self) -> BusinessTarget:
        """The bridge's view of this service."""
        return BusinessTarget(
            name=self.name,
            url=self.url,
            token=self.token,
            signing_secret=self.signing_secret,
            session_check=self.session_check,
            connect_timeout_s=self.connect_timeout_s,
            first_event_timeout_s=self.first_event_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            total_timeout_s=self.total_timeout_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            device_tools=self.device_tools,
        )


@dataclass(frozen=True, slots=True)
class OpenAITTSConfig:
    """`[tts.openai]`: an OpenAI-compatible speech endpoint; empty base_url = not configured."""

    base_url: str = ""
    api_key: Token = field(default="", repr=False)
    model: str = "tts-1"
    voice: str = "alloy"
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class HuoshanTTSConfig:
    """`[tts.huoshan]`: Volcengine HTTP TTS; empty appid = not configured."""

    url: str = "https://openspeech.bytedance.com/api/v1/tts"
    appid: str = ""
    token: Token = field(default="", repr=False)
    cluster: str = "volcano_tts"
    voice: str = "BV001_streaming"
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AliyunTTSConfig:
    """`[tts.aliyun]`: Aliyun NLS RESTful streaming synthesis; empty appkey = not configured.
    The AccessKey buys a token from CreateToken (asr_tts/nls_token.py), cached and renewed."""

    url: str = "https://nls-gateway-cn-shanghai.aliyuncs.com/stream/v1/tts"
    token_url: str = "https://nls-meta.cn-shanghai.aliyuncs.com/"
    appkey: str = ""
    access_key_id: Token = field(default="", repr=False)
    access_key_secret: Secret = field(default="", repr=False)
    voice: str = "xiaoyun"
    volume: int = 50  # 0-100
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class TencentTTSConfig:
    """`[tts.tencent]`: Tencent Cloud TextToVoice (TC3-signed HTTPS); empty keys = not
    configured."""

    url: str = "https://tts.tencentcloudapi.com/"
    secret_id: Token = field(default="", repr=False)
    secret_key: Secret = field(default="", repr=False)
    region: str = "ap-guangzhou"
    voice: int = 101001  # a VoiceType number; a business's voice_type must be one too
    volume: float = 0.0  # Tencent's scale, -10 to 10
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class DashScopeTTSConfig:
    """`[tts.dashscope]`: Aliyun DashScope CosyVoice over WebSocket; empty api_key = not
    configured."""

    url: str = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
    api_key: Token = field(default="", repr=False)
    model: str = "cosyvoice-v1"
    voice: str = "longxiaochun"
    volume: int = 50  # 0-100
    timeout_s: float = 10.0  # connection, task start, and each wait for more audio


@dataclass(frozen=True, slots=True)
class KokoroVoiceConfig:
    """`[tts] voice.zh` / `voice.en`: the Kokoro style per language: a name, a blend
    ("jf_nezumi:0.6+jm_kumo:0.4") or "mean"; empty = the built-in default."""

    zh: str = ""
    en: str = ""


@dataclass(frozen=True, slots=True)
class TTSConfig:
    """`[tts]`: the default provider and the downlink audio the relay declares (§1.2)."""

    # "embedded" is Kokoro; "espeak" the light espeak-ng voice (what "embedded" was before).
    provider: TTSName = "embedded"
    max_concurrency: int = 4  # espeak-ng processes at once
    timeout_s: float = 20.0
    voice: KokoroVoiceConfig = field(default_factory=KokoroVoiceConfig)
    voices_dir: str = ""  # more Kokoro style vectors (*.npy, *.npz)
    pool_size: int = 1  # Kokoro worker processes (~350-600 MB each)
    threads: int = 2  # onnxruntime threads per Kokoro worker
    fallback: Literal["", "espeak"] = ""  # Kokoro's files missing or corrupt: espeak speaks
    downlink_sample_rate: int = 24000
    frame_duration_ms: int = 60
    cache_mb: int = 32  # encoded frames of recent sentences; 0 = no cache
    first_segment_chars: int = 24  # cut a long first sentence early (a Han character: 3)
    stop_margin_ms: int = 30  # `tts stop` this long after the last frame has played (§1.6)
    openai: OpenAITTSConfig = field(default_factory=OpenAITTSConfig)
    huoshan: HuoshanTTSConfig = field(default_factory=HuoshanTTSConfig)
    aliyun: AliyunTTSConfig = field(default_factory=AliyunTTSConfig)
    tencent: TencentTTSConfig = field(default_factory=TencentTTSConfig)
    dashscope: DashScopeTTSConfig = field(default_factory=DashScopeTTSConfig)


@dataclass(frozen=True, slots=True)
class OpenAIASRConfig:
    """`[asr.openai]`: a Whisper-compatible transcription endpoint."""

    base_url: str = ""
    api_key: Token = field(default="", repr=False)
    model: str = "whisper-1"
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class VolcengineASRConfig:
    """`[asr.volcengine]`: Volcengine streaming ASR over WebSocket."""

    url: str = "wss://openspeech.bytedance.com/api/v2/asr"
    appid: str = ""
    token: Token = field(default="", repr=False)
    cluster: str = ""
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AliyunASRConfig:
    """`[asr.aliyun]`: Aliyun NLS real-time transcription over WebSocket; the AccessKey buys
    a token from CreateToken (asr_tts/nls_token.py), cached and renewed before it expires."""

    url: str = "wss://nls-gateway.cn-shanghai.aliyuncs.com/ws/v1"
    token_url: str = "https://nls-meta.cn-shanghai.aliyuncs.com/"
    appkey: str = ""  # the NLS project's; its language is set in Aliyun's console
    access_key_id: Token = field(default="", repr=False)
    access_key_secret: Secret = field(default="", repr=False)
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class TencentASRConfig:
    """`[asr.tencent]`: Tencent Cloud real-time ASR over a signed WebSocket."""

    url: str = "wss://asr.cloud.tencent.com/asr/v2"  # the AppID is appended
    appid: str = ""
    secret_id: Token = field(default="", repr=False)
    secret_key: Secret = field(default="", repr=False)
    engine_model_type: str = "16k_zh"  # devices speaking English get 16k_en
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class DashScopeASRConfig:
    """`[asr.dashscope]`: Aliyun DashScope Paraformer real-time recognition over WebSocket."""

    url: str = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
    api_key: Token = field(default="", repr=False)
    model: str = "paraformer-realtime-v2"
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ASRConfig:
    """`[asr]`: which provider recognises speech, and its settings."""

    # embedded: Whisper base (Mandarin, English); pocketsphinx: the light US English one
    provider: ASRName = "embedded"
    language: str = ""  # embedded: "auto" (zh or en, the default), "zh", "en"; empty: default
    # A device's language (handshake `language` / Accept-Language, else its OTA check's)
    # overrides `language` for its connection; false: `language` for every device.
    device_language: bool = True
    pool_size: int = 2  # embedded, pocketsphinx: decoder processes
    threads: int = 0  # embedded: cores per decode; 0 = all (up to 4)
    model_dir: str = ""  # embedded: the Whisper files; empty = the installed model packages
    fallback: Literal["", "pocketsphinx"] = ""  # embedded model unusable: refuse to start, or this
    grammar_words: tuple[str, ...] = ()  # pocketsphinx: restrict to these words (commands)
    timeout_s: float = 20.0
    openai: OpenAIASRConfig = field(default_factory=OpenAIASRConfig)
    volcengine: VolcengineASRConfig = field(default_factory=VolcengineASRConfig)
    aliyun: AliyunASRConfig = field(default_factory=AliyunASRConfig)
    tencent: TencentASRConfig = field(default_factory=TencentASRConfig)
    dashscope: DashScopeASRConfig = field(default_factory=DashScopeASRConfig)

    @property
    def uses_whisper(self) -> bool:
        """Whether Whisper is asked for: "embedded" without grammar_words (with them,
        configurations written when "embedded" was pocketsphinx keep its command grammar)."""
        return self.provider == "embedded" and not self.grammar_words


@dataclass(frozen=True, slots=True)
class VADConfig:
    """`[vad]`: Silero VAD and the utterance segmenter."""

    threshold: float = 0.5
    min_speech_s: float = 0.25
    min_silence_s: float = 0.6
    # A pause this long starts recognition early (batch ASR such as Whisper); 0 = never.
    early_silence_s: ZeroOk = 0.2
    pre_roll_s: float = 0.3
    max_utterance_s: float = 15.0
    audio_threads: int = 2  # decode + VAD executor threads
    batch_window_ms: ZeroOk = 10.0  # how long audio waits for other streams to share a batch
    max_late_ms: ZeroOk = 300.0  # auto/realtime audio waiting longer for VAD is dropped; 0 = never


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """`[listen]`: what `listen detect` text means (docs/protocol.md §1.3)."""

    wake_words: tuple[str, ...] = WAKE_WORDS  # compared without case, spaces, punctuation
    wake_word_chat: bool = False  # true: a wake word is also sent to the business as a chat
    max_text_chars: int = 1000  # typed text longer than this is refused (`text_too_long`)

    def rules(self) -> DetectRules:
        """The session's view of these settings."""
        return DetectRules.of(
            self.wake_words,
            wake_word_chat=self.wake_word_chat,
            max_text_chars=self.max_text_chars,
        )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """`[api]`: bearer tokens of the HTTP API; empty = loopback clients only."""

    tokens: tuple[Token, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`[metrics]`: bearer tokens that may read `/metrics` and nothing else (Prometheus), and
    an optional listener of its own that serves `/metrics` only, without a token."""

    tokens: tuple[Token, ...] = field(default=(), repr=False)
    port: int = 0  # 0: no listener of its own, /metrics on the main port only
    host: str = ""  # the metrics listener's address; empty: [server] host


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """`[redis]`: empty url = single node, all state in memory. `mode` says what `url` names:
    one Redis ("single"), the seed nodes of a Redis Cluster ("cluster"), or the sentinels
    that watch the primary `master_name` ("sentinel"); the last two take a comma list."""

    url: str = ""
    mode: Literal["single", "cluster", "sentinel"] = "single"
    master_name: str = ""  # sentinel mode: the name the sentinels know the primary by
    node_id: str = ""  # empty: <hostname>-<pid>
    presence_ttl_s: float = 30.0
    heartbeat_s: float = 10.0
    push_timeout_s: float = 3.0  # how long a push waits for the owning node's ack


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """`[mcp.vision]`: where a device's camera sends its pictures; empty url = none."""

    url: str = ""
    token: Secret = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class McpConfig:
    """`[mcp]`: the relay as MCP client of devices that declare it (docs/protocol.md §3)."""

    enabled: bool = True  # stock firmware expects `initialize` after a hello with features.mcp
    timeout_s: float = 10.0  # a device request (set-up step or tool call) answered within this
    max_tools: int = 128  # tools kept per device; more are dropped and counted
    max_list_bytes: int = 256 * 1024  # JSON size of the kept list; beyond, dropped and counted
    max_calls_per_turn: int = 8  # tool calls one user turn may run (§3.3)
    vision: VisionConfig = field(default_factory=VisionConfig)


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """`[ota]`: the firmware's boot-time check (docs/protocol.md §1.0): where and how to connect."""

    enabled: bool = True
    websocket_url: str = ""  # empty: ws(s)://<request Host>/xiaozhi/v1/
    trust_forwarded: bool = False  # derive the URL from X-Forwarded-Proto/Host (a proxy)
    protocol_version: int = 1  # the Protocol-Version devices will use (§1.4)
    hand_out_static_token: bool = False  # auth mode "tokens": give devices the first token
    # Minutes east of UTC (negative: west); the firmware sets its clock to local time.
    timezone_offset_min: SignedInt = 0
    firmware_version: str = ""  # offered to every device; empty: never offer an upgrade
    firmware_url: str = ""  # the image for firmware_version
    # Pages (origins) that may call the check from a browser; "*" = any (docs/protocol.md §1.8).
    cors_origins: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """`[console]`: the browser console at `/console` (a virtual device); off by default."""

    enabled: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    """`[log]`: level, format and how much of what users say the log keeps."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"  # json: one object per line (README.md, "Logs")
    stt_chars: int = 64  # recognised text kept in a turn's log line; 0 = none (privacy)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    business: tuple[BusinessConfig, ...] = ()
    tts: TTSConfig = field(default_factory=TTSConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    vad: VADConfig = field(default_factory=VADConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    mcp: McpConfig = field(default_factory=McpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
