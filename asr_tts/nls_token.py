"""Aliyun NLS (Intelligent Speech Interaction) access tokens: AccessKey in, token out, cached.

Both NLS providers (asr_tts/asr/aliyun.py, asr_tts/tts/aliyun.py) authenticate with a token
that the POP API `CreateToken` issues for an AccessKey. Followed: Aliyun's "obtain a token
using OpenAPI" page and its RPC signature page (signature version 1.0):

- `GET https://nls-meta.cn-shanghai.aliyuncs.com/?<query>` with the parameters AccessKeyId,
  Action=CreateToken, Version=2019-02-28, Format=JSON, RegionId=cn-shanghai, Timestamp
  (UTC, `YYYY-MM-DDThh:mm:ssZ`), SignatureMethod=HMAC-SHA1, SignatureVersion=1.0,
  SignatureNonce (a fresh UUID), and Signature.
- Signature: percent-encode every name and value (UTF-8; the RFC 3986 unreserved characters
  `A-Z a-z 0-9 - _ . ~` stay, everything else is `%XY` upper-case hex, so a space is `%20` and
  `*` is `%2A`), sort by name, join as `k=v&...`; the string to sign is
  `GET&%2F&<the joined query, percent-encoded again>`; the signature is the base64 of its
  HMAC-SHA1 under the key `<AccessKeySecret>&`. Aliyun publishes a worked example
  (DescribeRegions, `testid` / `testsecret`) that tests/asr_tts/test_nls_token.py checks.
- Answer: `{"RequestId", "Token": {"Id", "ExpireTime": <unix seconds>, "UserId"}}`; a failure
  has an HTTP error status and `{"RequestId", "Code", "Message"}` (e.g.
  `InvalidAccessKeyId.NotFound`, `SignatureDoesNotMatch`).

A token lives for hours (ExpireTime says how many); it is fetched on first use, reused, and
fetched again `refresh_before_s` before it expires (or half-way through its life, should it
be issued for less than twice that: never a fetch per request). One fetch runs at a time: concurrent
callers wait for it. A failed fetch is reported to every waiter and forgotten, so the next
call tries again. A provider told by the gateway that the token is invalid or expired
(status 40000001) calls `invalidate` and retries once with a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import orjson

from asr_tts.errors import Reason, http_reason

DEFAULT_TOKEN_URL = "https://nls-meta.cn-shanghai.aliyuncs.com/"
TOKEN_REJECTED = 40000001  # the gateway's status for a token that is invalid or expired
TOO_MANY_REQUESTS = 40000005  # the gateway's status for requests or connections over the limit
_MESSAGE_LIMIT = 200
_MAX_ANSWER_BYTES = 64 * 1024


class TokenError(Exception):
    """No token: CreateToken failed or answered something unusable; never holds the secret.
    The reason is the one the provider that wanted the token fails with."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def nls_reason(status: object) -> Reason:
    """The reason for a failure status the NLS gateway reports (ASR events, TTS answers)."""
    if status == TOO_MANY_REQUESTS:
        return "rate_limited"
    if status == TOKEN_REJECTED:
        return "auth"
    return "refused"


def percent_encode(value: str) -> str:
    """POP percent-encoding: UTF-8, RFC 3986 unreserved characters kept, `%XY` otherwise."""
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """The parameters sorted by name, each name and value percent-encoded, joined with `&`."""
    return "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))


def string_to_sign(params: Mapping[str, str], method: str = "GET") -> str:
    """What an RPC-style request signs: `<METHOD>&%2F&<encoded canonical query>`."""
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def pop_signature(params: Mapping[str, str], access_key_secret: str, method: str = "GET") -> str:
    """The RPC signature (version 1.0, HMAC-SHA1) of `params`, without `Signature` among them."""
    key = f"{access_key_secret}&".encode()
    digest = hmac.new(key, string_to_sign(params, method).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def create_token_params(access_key_id: str, *, now: float, nonce: str) -> dict[str, str]:
    """The CreateToken parameters, Signature not yet among them."""
    return {
        "AccessKeyId": access_key_id,
        "Action": "CreateToken",
        "Version": "2019-02-28",
        "Format": "JSON",
        "RegionId": "cn-shanghai",
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce,
    }


@dataclass(frozen=True, slots=True)
class Token:
    """An issued token and when it expires (unix seconds)."""

    value: str
    refresh_at: float  # unix seconds: fetch a new one from then on


class NLSTokens:
    """The token of one AccessKey: fetched once, shared, refreshed before it expires."""

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_TOKEN_URL,
        timeout_s: float = 10.0,
        refresh_before_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._id, self._secret = access_key_id, access_key_secret
        self._session = session
        self._url = url
        self._timeout_s = timeout_s
        self._refresh_before_s = refresh_before_s
        self._clock = clock  # when a token is due for refresh (ExpireTime is unix time)
        self._token: Token | None = None
        self._fetch: asyncio.Task[Token] | None = None

    async def get(self) -> str:
        """A token not yet due for refresh; TokenError when none is issued."""
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        if self._fetch is None:
            self._fetch = asyncio.get_running_loop().create_task(self._create())
            self._fetch.add_done_callback(self._fetched)
        # Shielded: a caller that gives up does not cancel the fetch the others wait for.
        return (await asyncio.shield(self._fetch)).value

    def invalidate(self, value: str) -> None:
        """Forget `value` (the gateway refused it), so that the next get() fetches a new one."""
        if self._token is not None and self._token.value == value:
            self._token = None

    def _fetched(self, task: asyncio.Task[Token]) -> None:
        """Keep a new token; a failure is only forgotten (its waiters have it)."""
        self._fetch = None
        if not task.cancelled() and task.exception() is None:
            self._token = task.result()

    async def _create(self) -> Token:
        """One CreateToken request."""
        params = create_token_params(self._id, now=time.time(), nonce=str(uuid.uuid4()))
        signature = percent_encode(pop_signature(params, self._secret))
        query = f"{canonical_query(params)}&Signature={signature}"
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(f"{self._url}?{query}") as resp,
            ):
                status, raw = resp.status, await resp.content.read(_MAX_ANSWER_BYTES)
        except TimeoutError as exc:
            raise TokenError(
                f"CreateToken: no answer within {self._timeout_s} s", reason="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            # str(), not repr(): the error names the URL, whose query carries no secret.
            raise TokenError(
                f"CreateToken: {type(exc).__name__}: {exc}", reason="connection"
            ) from exc
        value, expire = _parse_answer(status, raw)
        now = self._clock()
        return Token(value, expire - min(self._refresh_before_s, max(0.0, expire - now) / 2))


def _parse_answer(status: int, raw: bytes) -> tuple[str, float]:
    """The token and its ExpireTime in a CreateToken answer, or TokenError with the answer's
    code and message."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise TokenError(
            f"CreateToken: HTTP {status} with a body that is not a JSON object",
            reason="bad_answer",
        )
    token = doc.get("Token")
    if status != 200 or not isinstance(token, dict):
        code, message = str(doc.get("Code") or ""), str(doc.get("Message") or "")
        raise TokenError(
            f"CreateToken: HTTP {status} {code}: {message[:_MESSAGE_LIMIT]}",
            reason=_refusal_reason(status, code),
        )

    value, expire = token.get("Id"), token.get("ExpireTime")
    if not isinstance(value, str) or not value or not isinstance(expire, int | float):
        raise TokenError(
            "CreateToken: an answer without Token.Id and Token.ExpireTime", reason="bad_answer"
        )
    return value, float(expire)


def _refusal_reason(status: int, code: str) -> Reason:
    """The reason for a CreateToken answer without a token: the POP API refuses an unknown
    AccessKey (InvalidAccessKeyId.*) or a wrong secret (SignatureDoesNotMatch) with 404 or
    400, which are the credentials' fault; Throttling.* is its rate limit."""
    if code.startswith(("InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return "auth"
    if code.startswith("Throttling"):
        return "rate_limited"
    return http_reason(status) if status != 200 else "bad_answer"
