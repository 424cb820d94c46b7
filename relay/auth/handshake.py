"""Device handshake: identity and authentication (docs/protocol.md §1.1); HTTP API bearer checks."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from protocol.errors import ApiError, Refusal
from relay.config.schema import ApiConfig

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
MAX_DEVICE_ID = 64


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the device said about itself before the upgrade."""

    device_id: str
    client_id: str
    token: str
    protocol_version: int
    agent_id: str
    raw_device_id: str = ""  # as sent: HMAC tokens are signed over it
    language: str = ""  # the language the device speaks ("zh", "en", …); empty: not said


class HandshakeError(Refusal):
    """The device WebSocket's handshake cannot be accepted (docs/protocol.md §1.1)."""


def spoken_language(value: str) -> str:
    """The primary language of a `language` parameter or an Accept-Language header, lower
    case ("zh-CN,zh;q=0.9,en;q=0.8" -> "zh"); empty when it names none ("*", "")."""
    first = value.split(",")[0].split(";")[0].strip().lower()
    primary = first.replace("_", "-").split("-")[0]
    return primary if primary.isascii() and primary.isalpha() else ""


class SpokenLanguages:
    """The language each device's OTA check named (its Accept-Language: the firmware sends it
    there), for a WebSocket handshake of the same device that names none. In this process's
    memory, at most `limit` devices, the least recently heard forgotten first."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._by_device: OrderedDict[str, str] = OrderedDict()

    def remember(self, device_id: str, accept_language: str) -> None:
        """Note the language of `device_id`'s OTA check (nothing when it names none)."""
        if language := spoken_language(accept_language):
            self._by_device[device_id] = language
            self._by_device.move_to_end(device_id)
            if len(self._by_device) > self._limit:
                self._by_device.popitem(last=False)

    def complete(self, hs: Handshake, *, follow: bool = True) -> Handshake:
        """`hs`, with the remembered language if it names none itself; without any when not
        `follow` (`[asr] device_language = false`: `[asr] language` for every device)."""
        if not follow:
            return replace(hs, language="")
        if hs.language or not (known := self._by_device.get(hs.device_id)):
            return hs
        return replace(hs, language=known)


def canonical_device_id(raw: str) -> str:
    """MAC without separators, upper-cased; anything else trimmed and capped (§1.1 Decision)."""
    value = raw.strip()
    if _MAC.match(value):
        return re.sub(r"[:-]", "", value).upper()
    return value[:MAX_DEVICE_ID]


def parse_handshake(headers: Mapping[str, str], query: Mapping[str, str]) -> Handshake:
    """Read the handshake from headers, or their query-parameter form for browsers (§1.1)."""

    def get(name: str) -> str:
        value = headers.get(name)
        if value is None:
            low = name.lower()
            value = query.get(low) or query.get(low.replace("-", "_")) or ""
        return value.strip()

    version_raw = get("Protocol-Version") or "1"
    if version_raw not in ("1", "2", "3"):
        raise HandshakeError(ApiError.BAD_VERSION, "Protocol-Version must be 1, 2 or 3")
    raw_device_id = get("Device-Id")
    device_id = canonical_device_id(raw_device_id)
    if not device_id:
        raise HandshakeError(
            ApiError.NO_DEVICE_ID, "Device-Id header or device-id parameter required"
        )
    token = get("Authorization")
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    return Handshake(
        device_id=device_id,
        client_id=get("Client-Id"),
        token=token,
        protocol_version=int(version_raw),
        agent_id=get("X-Agent-ID"),
        raw_device_id=raw_device_id,
        # The query parameter is the device's own choice; a browser sends its locale's header.
        language=spoken_language(query.get("language") or headers.get("Accept-Language", "")),
    )


def contains_token(token: str, allowed: Iterable[str]) -> bool:
    """Constant-time membership test: every candidate is compared in full."""
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def api_allowed(authorization: str | None, remote: str | None, cfg: ApiConfig) -> bool:
    """Bearer token from `[api] tokens`; with none configured, loopback clients only."""
    if not cfg.tokens:
        return _is_loopback(remote)
    return _bearer_in(authorization, cfg.tokens)


def metrics_allowed(
    authorization: str | None, remote: str | None, api: ApiConfig, tokens: tuple[str, ...]
) -> bool:
    """`/metrics`: a token of `[metrics] tokens` (read metrics, nothing else), or what the
    API allows."""
    return _bearer_in(authorization, tokens) or api_allowed(authorization, remote, api)


def _bearer_in(authorization: str | None, tokens: tuple[str, ...]) -> bool:
    if not tokens or not authorization or authorization[:7].lower() != "bearer ":
        return False
    return contains_token(authorization[7:].strip(), tokens)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback
