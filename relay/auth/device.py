"""Device authentication at the handshake, in the configured mode (docs/protocol.md §1.1):
`none`, `tokens` (a static list), `hmac` (xiaozhi-compatible signed tokens), `redis`
(`token:{token}` bindings), plus an optional allow-list of device ids."""

from __future__ import annotations

import time

from protocol.errors import ApiError
from relay.auth.handshake import Handshake, HandshakeError, canonical_device_id, contains_token
from relay.auth.tokens import TokenStoreUnavailable, binding_allows, lookup_redis_token, verify
from relay.cluster.redis_client import AnyRedis
from relay.config.schema import AuthConfig


class DeviceAuthenticator:
    """Checks a handshake; raises `HandshakeError` (answered before the upgrade)."""

    def __init__(self, cfg: AuthConfig, redis: AnyRedis | None = None) -> None:
        self._cfg = cfg
        self._redis = redis
        # Entries may be written as MACs with colons: compare canonical forms (§1.1).
        self._allowed = frozenset(canonical_device_id(d) for d in cfg.allowed_devices)

    async def check(self, hs: Handshake) -> None:
        """Accept or refuse the device; tokens are compared in constant time, never logged."""
        cfg = self._cfg
        if self._allowed and hs.device_id not in self._allowed:
            # docs/protocol.md §1.1 answers 401 here (the OTA check answers 403).
            raise HandshakeError(
                ApiError.DEVICE_NOT_ALLOWED, "device is not allowed on this relay", status=401
            )
        if cfg.mode == "none":
            return
        if not hs.token:
            raise HandshakeError(ApiError.BAD_TOKEN, "missing device token")
        if cfg.mode == "tokens":
            ok = contains_token(hs.token, cfg.tokens)
        elif cfg.mode == "hmac":
            ok = verify(
                cfg.hmac_secret,
                hs.token,
                hs.client_id,
                hs.raw_device_id or hs.device_id,
                time.time(),
                cfg.hmac_max_age_s,
            )
        else:
            ok = await self._check_redis(hs)
        if not ok:
            raise HandshakeError(ApiError.BAD_TOKEN, "missing or invalid device token")

    async def _check_redis(self, hs: Handshake) -> bool:
        if self._redis is None:
            raise HandshakeError(ApiError.TOKEN_STORE_UNAVAILABLE, "token store not configured")
        try:
            binding = await lookup_redis_token(self._redis, hs.token)
        except TokenStoreUnavailable as exc:
            raise HandshakeError(
                ApiError.TOKEN_STORE_UNAVAILABLE, "token store unavailable, retry shortly"
            ) from exc
        return binding is not None and binding_allows(binding, hs.device_id)
