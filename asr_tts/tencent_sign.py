"""Tencent Cloud's two request signatures, as pure functions (no clock, no randomness).

- TC3-HMAC-SHA256 ("signature v3", the API 3.0 documentation's "Signature v3" page): the
  TextToVoice TTS call. CanonicalRequest = method, "/", the query string (always "" for POST),
  the canonical headers ("content-type:<value>\\nhost:<value>\\n", keys lowercase and sorted),
  the signed header names ("content-type;host"), then the lowercase hex SHA-256 of the body.
  StringToSign = "TC3-HMAC-SHA256", the timestamp, the credential scope
  "<UTC date>/<service>/tc3_request", the hex SHA-256 of CanonicalRequest, one per line. The
  key is derived HMAC-SHA256("TC3" + SecretKey, date) -> (, service) -> (, "tc3_request"); the
  signature is the hex HMAC-SHA256 of StringToSign under it. Checked against the page's own
  example (CVM DescribeInstances at 1551113065) in tests/asr_tts/test_tencent_sign.py.
- The real-time ASR handshake (API 2.0, "实时语音识别（websocket）"): every query parameter but
  `signature`, sorted by name, "k=v" joined with "&", after "<host><path>?" (the URL without
  "wss://"); HMAC-SHA1 under the SecretKey, base64, then URL-encoded (the document insists: a
  "+" or "=" left raw fails now and then) as the `signature` parameter. Checked against that
  page's example (G8jDQBRg1JfeBi/YnTjyjekxfDA=).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

TC3_ALGORITHM = "TC3-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac256(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def utc_date(timestamp: int) -> str:
    """The credential scope's date: the UTC day of `timestamp` (never the local one)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def tc3_canonical_request(content_type: str, host: str, payload: bytes) -> str:
    """The CanonicalRequest of a POST to "/" signing content-type and host."""
    headers = f"content-type:{content_type.strip().lower()}\nhost:{host.strip().lower()}\n"
    return f"POST\n/\n\n{headers}\n{SIGNED_HEADERS}\n{_sha256_hex(payload)}"


def tc3_string_to_sign(canonical_request: str, service: str, timestamp: int) -> str:
    """StringToSign for `canonical_request` sent at `timestamp` to `service`."""
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    hashed = _sha256_hex(canonical_request.encode())
    return f"{TC3_ALGORITHM}\n{timestamp}\n{scope}\n{hashed}"


def tc3_signature(secret_key: str, service: str, timestamp: int, string_to_sign: str) -> str:
    """The hex signature of `string_to_sign` under the key derived from `secret_key`."""
    key = _hmac256(f"TC3{secret_key}".encode(), utc_date(timestamp))
    key = _hmac256(_hmac256(key, service), "tc3_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def tc3_authorization(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    content_type: str,
    payload: bytes,
    timestamp: int,
) -> str:
    """The `Authorization` header of a TC3-HMAC-SHA256 signed POST."""
    request = tc3_canonical_request(content_type, host, payload)
    to_sign = tc3_string_to_sign(request, service, timestamp)
    signature = tc3_signature(secret_key, service, timestamp, to_sign)
    scope = f"{utc_date(timestamp)}/{service}/tc3_request"
    return (
        f"{TC3_ALGORITHM} Credential={secret_id}/{scope}, "
        f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )


def asr_sign_text(host_path: str, params: Mapping[str, str]) -> str:
    """What the ASR handshake signs: `host_path` ("asr.cloud.tencent.com/asr/v2/<appid>"),
    "?", then the parameters sorted by name, unencoded."""
    return host_path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params))


def asr_signature(secret_key: str, sign_text: str) -> str:
    """base64(HMAC-SHA1(secret_key, sign_text)), before URL encoding."""
    digest = hmac.new(secret_key.encode(), sign_text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def asr_query(params: Mapping[str, str], signature: str) -> str:
    """The handshake's query string: the sorted parameters, then the URL-encoded signature."""
    pairs = [f"{k}={quote(params[k], safe='')}" for k in sorted(params)]
    return "&".join([*pairs, f"signature={quote(signature, safe='')}"])
