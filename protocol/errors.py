"""Every error code the relay speaks, and the one mapping from a failure to what a peer is
told: a device `error` message (docs/protocol.md §1.5), a business error event (§2.6, §2.7), a
close code (§1.7), or an HTTP status with `errorType` and a hint (the HTTP API)."""

from __future__ import annotations

from enum import IntEnum, StrEnum

from protocol.jsonutil import MAX_DEPTH


class CloseCode(IntEnum):
    """WebSocket close codes the relay uses (docs/protocol.md §1.7)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # a client frame without the mask bit (RFC 6455 §5.1)
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    OVER_CAPACITY = 1013
    NO_HELLO = 4000
    REPLACED = 4001


class DeviceError(StrEnum):
    """Codes of `{"type":"error"}` messages sent to a device for a bad text frame (§1.5)."""

    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    BAD_FRAME = "bad_frame"
    NOT_READY = "not_ready"
    BUSY = "busy"
    TEXT_TOO_LONG = "text_too_long"
    TOO_DEEP = "too_deep"


class BusinessError(StrEnum):
    """Codes of the error events a device receives when a business request fails (§2.6, §2.7)."""

    UNREACHABLE = "business_unreachable"
    STATUS = "business_status"
    CONTENT_TYPE = "business_content_type"
    TIMEOUT = "business_timeout"
    NOT_CONFIGURED = "business_not_configured"
    INCOMPLETE = "business_incomplete"


class BusinessOutcome(StrEnum):
    """How one business request ended; a small fixed set, used as a metric label."""

    OK = "ok"
    INCOMPLETE = "incomplete"  # the stream ended without this request's message_end (§2.7)
    UNREACHABLE = "unreachable"
    STATUS = "status"
    CONTENT_TYPE = "content_type"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


# The outcomes a device is told about, in the §2.4 envelope (§2.6, §2.7).
_BUSINESS_ERROR = {
    BusinessOutcome.UNREACHABLE: BusinessError.UNREACHABLE,
    BusinessOutcome.STATUS: BusinessError.STATUS,
    BusinessOutcome.CONTENT_TYPE: BusinessError.CONTENT_TYPE,
    BusinessOutcome.TIMEOUT: BusinessError.TIMEOUT,
    BusinessOutcome.INCOMPLETE: BusinessError.INCOMPLETE,
}


def business_error(outcome: BusinessOutcome) -> BusinessError | None:
    """The error event code a device receives for `outcome`; None when it is told nothing."""
    return _BUSINESS_ERROR.get(outcome)


# One human sentence per code; peers see these, never exception text.
MESSAGES: dict[str, str] = {
    DeviceError.BAD_JSON: "text frame is not a JSON object",
    DeviceError.UNKNOWN_TYPE: "unknown message type",
    DeviceError.MISSING_FIELD: "a required field is missing",
    DeviceError.INVALID_FIELD: "a field has the wrong type or value",
    DeviceError.BAD_FRAME: "binary frame header is invalid for the negotiated protocol version",
    DeviceError.NOT_READY: "send hello first",
    DeviceError.BUSY: "too many requests in flight for this session",
    DeviceError.TEXT_TOO_LONG: "the text is longer than this relay accepts",
    DeviceError.TOO_DEEP: f"JSON nested deeper than {MAX_DEPTH} levels",
    BusinessError.UNREACHABLE: "business service could not be reached",
    BusinessError.STATUS: "business service answered with an error status",
    BusinessError.CONTENT_TYPE: "business service did not answer with text/event-stream",
    BusinessError.TIMEOUT: "business service did not answer in time",
    BusinessError.NOT_CONFIGURED: "no business service is configured for this device",
    BusinessError.INCOMPLETE: "business service ended its answer without message_end",
}


class ProtocolError(Exception):
    """A peer broke the wire contract; `code` is what the peer is told."""

    def __init__(self, code: DeviceError, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else str(code))
        self.code = code
        self.detail = detail


class ApiError(StrEnum):
    """`errorType` of an HTTP answer that is not a success (API, OTA, WebSocket handshake)."""

    BAD_REQUEST = "bad_request"
    BAD_JSON = "bad_json"
    TOO_DEEP = "too_deep"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_AGENT = "unknown_agent"
    NO_DEVICE_ID = "no_device_id"
    BAD_VERSION = "bad_version"
    BAD_TOKEN = "bad_token"
    BAD_HOST = "bad_host"
    BAD_ORIGIN = "bad_origin"
    DEVICE_NOT_ALLOWED = "device_not_allowed"
    OTA_DISABLED = "ota_disabled"
    DRAINING = "draining"
    TOKEN_STORE_UNAVAILABLE = "token_store_unavailable"
    # A push or a lookup that did not reach the device (docs/protocol.md §4).
    OFFLINE = "offline"
    TIMEOUT = "timeout"
    REDIS_UNAVAILABLE = "redis_unavailable"
    REJECTED = "rejected"
    NOT_SUPPORTED = "not_supported"
    # A device tools request without the device's answer (docs/protocol.md §3.2).
    MCP_UNSUPPORTED = "mcp_unsupported"
    TOOLS_UNAVAILABLE = "tools_unavailable"
    UNKNOWN_TOOL = "unknown_tool"
    # The edge, on any path (README "Limits at the edge").
    OVER_CAPACITY = "over_capacity"
    REQUEST_TIMEOUT = "request_timeout"
    BAD_BODY = "bad_body"
    # Speech over HTTP: POST /api/v1/stt and /api/v1/tts (docs/integration.md §4).
    UNSUPPORTED_MEDIA = "unsupported_media_type"
    BAD_AUDIO = "bad_audio"
    ASR_BUSY = "asr_busy"
    PROVIDER_TIMEOUT = "provider_timeout"
    PROVIDER_FAILED = "provider_failed"


# Status and default hint of each `errorType`; a call site may give a more precise hint.
HTTP: dict[ApiError, tuple[int, str]] = {
    ApiError.BAD_REQUEST: (400, ""),
    ApiError.BAD_JSON: (400, ""),
    ApiError.TOO_DEEP: (400, f"nest arrays and objects at most {MAX_DEPTH} levels deep"),
    ApiError.TOO_LARGE: (413, ""),
    ApiError.UNAUTHORIZED: (401, "send Authorization: Bearer <token> with an [api] token"),
    ApiError.UNKNOWN_AGENT: (400, "see [[business]] name"),
    ApiError.NO_DEVICE_ID: (400, "send the Device-Id header (or ?device-id=)"),
    ApiError.BAD_VERSION: (400, "send Protocol-Version 1, 2 or 3"),
    ApiError.BAD_TOKEN: (
        401,
        "send Authorization: Bearer <token> (or ?authorization=) with a configured token",
    ),
    ApiError.BAD_HOST: (400, "set [ota] websocket_url"),
    ApiError.BAD_ORIGIN: (
        403,
        "add the page's origin (scheme://host[:port]) to [ota] cors_origins"
        " (or [server] check_origin = false)",
    ),
    ApiError.DEVICE_NOT_ALLOWED: (403, "add the device id to [auth] allowed_devices"),
    ApiError.OTA_DISABLED: (404, "[ota] enabled"),
    ApiError.DRAINING: (503, "connect to another relay or retry shortly"),
    ApiError.TOKEN_STORE_UNAVAILABLE: (
        503,
        "the token store (Redis) is unreachable; retry shortly",
    ),
    ApiError.OFFLINE: (404, "the device is not connected to any relay"),
    ApiError.TIMEOUT: (
        504,
        "the relay holding the device did not confirm in time; it may still arrive",
    ),
    ApiError.REDIS_UNAVAILABLE: (
        503,
        "the cluster store is unreachable; devices on this node still work",
    ),
    ApiError.REJECTED: (409, "the device's connection was closing and did not take the message"),
    ApiError.NOT_SUPPORTED: (
        409,
        "the device's hello did not declare features.notify.config_updated,"
        " so it would ignore a notify",
    ),
    ApiError.MCP_UNSUPPORTED: (
        409,
        "the device's hello did not declare features.mcp (or [mcp] enabled is false)",
    ),
    ApiError.TOOLS_UNAVAILABLE: (
        503,
        "the device has not listed its tools yet, or did not answer within [mcp] timeout_s",
    ),
    ApiError.UNKNOWN_TOOL: (404, "GET /api/v1/devices/{device_id}/tools lists its tools"),
    ApiError.OVER_CAPACITY: (503, "retry shortly, or connect to another relay"),
    ApiError.REQUEST_TIMEOUT: (408, "send the whole request at once"),
    ApiError.BAD_BODY: (400, ""),
    ApiError.UNSUPPORTED_MEDIA: (
        415,
        "send audio/wav, audio/L16;rate=<Hz> or application/x-opus-frames",
    ),
    ApiError.BAD_AUDIO: (422, "send 16-bit PCM WAV, raw 16-bit PCM or Opus packets with sound"),
    ApiError.ASR_BUSY: (503, "every speech decoder is busy (see [asr] pool_size); retry shortly"),
    ApiError.PROVIDER_TIMEOUT: (504, "the speech provider did not answer within its timeout_s"),
    ApiError.PROVIDER_FAILED: (502, "the speech provider failed; the relay's log says why"),
}


class Refusal(Exception):
    """An HTTP request the relay refuses: its `errorType`, what is wrong, and optionally a
    more precise hint than the code's, or (where docs/protocol.md says so) another status."""

    def __init__(
        self, code: ApiError, message: str, hint: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status = status

    def answer(self) -> tuple[int, dict[str, str]]:
        """Status and body of the refusal (`api_error_body`)."""
        status, body = api_error_body(self.code, self.message, self.hint)
        return self.status or status, body


def api_error_body(
    code: ApiError, error: str, hint: str | None = None
) -> tuple[int, dict[str, str]]:
    """Status and body of an HTTP error: `{"error","errorType","hint"}`, one shape everywhere."""
    status, default_hint = HTTP[code]
    return status, {
        "error": error,
        "errorType": code.value,
        "hint": default_hint if hint is None else hint,
    }
