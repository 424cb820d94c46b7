"""Device tokens checked at the handshake (docs/protocol.md §1.1). Tokens are secrets: never log
them, nor put them in exception messages.

- `hmac` mode: the token xiaozhi-compatible servers issue, `base64url(HMAC-SHA256(secret,
  "{client_id}|{device_id}|{ts}")).{ts}` with the padding stripped and `ts` in Unix seconds
  (xinnan-tech/xiaozhi-esp32-server, main/xiaozhi-server/core/auth.py, `AuthManager._sign`,
  `generate_token`, `verify_token`). The token carries no ids; the device sends them as
  Client-Id and Device-Id, and xiaozhi-server signs the Device-Id exactly as sent.
- `redis` mode: an opaque token whose binding lives in Redis at `token:{token}`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.auth.handshake import canonical_device_id
from relay.cluster.redis_client import REDIS_ERRORS, AnyRedis, open_any, retried_errors

DEFAULT_SKEW_S = 60.0  # `ts` is the minting server's clock, not the device's: NTP-close
MAX_TOKEN_CHARS = 512
_HMAC_TOKEN = re.compile(r"([A-Za-z0-9_-]{43})\.([0-9]{1,12})")  # 32 bytes → 43 chars


def _sign(secret: str, client_id: str, device_id: str, ts: int) -> str:
    content = f"{client_id}|{device_id}|{ts}".encode()
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mint(secret: str, client_id: str, device_id: str, ts: int) -> str:
    """A token for `device_id`/`client_id` issued at `ts` (Unix seconds), as xiaozhi-server."""
    if not secret:
        raise ValueError("token secret must not be empty")
    if ts < 0:
        raise ValueError("token timestamp must not be negative")
    return f"{_sign(secret, client_id, device_id, ts)}.{ts}"


def verify(
    secret: str,
    token: str,
    client_id: str,
    device_id: str,
    now: float,
    max_age_s: float,
    *,
    skew_s: float = DEFAULT_SKEW_S,
) -> bool:
    """Whether `token` was minted with `secret` for these ids, at most `max_age_s` ago and
    not more than `skew_s` in the future. `device_id` as the device sent it; a token minted
    over the canonical form (§1.1) is accepted too."""
    if not secret or len(token) > MAX_TOKEN_CHARS or not math.isfinite(now):
        return False
    m = _HMAC_TOKEN.fullmatch(token)
    if m is None:
        return False
    ts = int(m.group(2))
    if now - ts > max_age_s or ts - now > skew_s:
        return False
    given = m.group(1).encode()
    ok = False
    for candidate in dict.fromkeys((device_id, canonical_device_id(device_id))):
        # Every candidate is computed and compared: the time taken says nothing.
        ok |= hmac.compare_digest(given, _sign(secret, client_id, candidate, ts).encode())
    return ok


@dataclass(frozen=True, slots=True)
class TokenBinding:
    """What a `redis`-mode token grants: one device, for one user, until `expires_at`."""

    device_id: str
    user_id: str
    expires_at: float | None  # Unix seconds; None = no expiry


def open_token_store(url: str, mode: str = "single", master: str = "") -> AnyRedis:
    """The client `lookup_redis_token` asks (a stale pooled socket is retried once), of
    `[redis] mode`: one Redis, a Redis Cluster, or a Sentinel-managed primary."""
    if mode != "single":
        return open_any(url, 2.0, mode, master)
    return Redis.from_url(url, retry_on_error=retried_errors())


class TokenStoreUnavailable(Exception):
    """Redis could not be asked: answer the device 503 (retry), not 401 (wrong token)."""


async def lookup_redis_token(
    redis: AnyRedis, token: str, *, key_prefix: str = "token:", timeout_s: float = 2.0
) -> TokenBinding | None:
    """The binding stored at `token:{token}` (a JSON object string, or a hash) with fields
    device_id, user_id and optionally expires_at; None when absent or malformed. Raises
    `TokenStoreUnavailable` when Redis does not answer within `timeout_s`."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    key = key_prefix + token
    try:
        async with asyncio.timeout(timeout_s):
            try:
                raw = await redis.get(key)
            except ResponseError:  # WRONGTYPE: stored as a hash
                row = await redis.hgetall(key)
                return _binding({_str(k): _str(v) for k, v in row.items()})
    except REDIS_ERRORS as exc:
        raise TokenStoreUnavailable("token store unavailable") from exc
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _binding(data) if isinstance(data, dict) else None


def binding_allows(binding: TokenBinding, device_id: str, now: float | None = None) -> bool:
    """Whether the binding covers this device (ids compared in canonical form) at `now`."""
    now = time.time() if now is None else now
    if binding.expires_at is not None and now >= binding.expires_at:
        return False
    return hmac.compare_digest(
        canonical_device_id(binding.device_id).encode(), canonical_device_id(device_id).encode()
    )


def _str(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _binding(data: dict[str, object]) -> TokenBinding | None:
    device_id, user_id, expires = data.get("device_id"), data.get("user_id", ""), None
    if not isinstance(device_id, str) or not device_id.strip():
        return None
    if not isinstance(user_id, str | int) or isinstance(user_id, bool):
        return None
    raw_expiry = data.get("expires_at")
    if raw_expiry not in (None, ""):
        if not isinstance(raw_expiry, int | float | str) or isinstance(raw_expiry, bool):
            return None
        try:
            expires = float(raw_expiry)
        except ValueError:
            return None
        if not math.isfinite(expires):
            return None
        if expires > 1e11:  # milliseconds (a Java back end's habit): 1e11 s is year 5138
            expires /= 1000
    return TokenBinding(device_id.strip(), str(user_id), expires)
