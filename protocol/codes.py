"""Error codes and close codes shared by both wires (docs/protocol.md §1.5, §1.7, §2.6)."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the relay uses (docs/protocol.md §1.7)."""

    NORMAL = 1000
    GOING_AWAY = 1001
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


class BusinessError(StrEnum):
    """Codes of the error events a device receives when a business request fails (§2.6)."""

    UNREACHABLE = "business_unreachable"
    STATUS = "business_status"
    CONTENT_TYPE = "business_content_type"
    TIMEOUT = "business_timeout"
    NOT_CONFIGURED = "business_not_configured"


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
    BusinessError.UNREACHABLE: "business service could not be reached",
    BusinessError.STATUS: "business service answered with an error status",
    BusinessError.CONTENT_TYPE: "business service did not answer with text/event-stream",
    BusinessError.TIMEOUT: "business service did not answer in time",
    BusinessError.NOT_CONFIGURED: "no business service is configured for this device",
}


class ProtocolError(Exception):
    """A peer broke the wire contract; `code` is what the peer is told."""

    def __init__(self, code: DeviceError, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else str(code))
        self.code = code
        self.detail = detail
