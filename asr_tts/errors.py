"""Why a speech provider failed: a small closed set, so the relay can count failures by it.

Every ASRError and TTSError carries one of these; the provider that raises it knows best
(a vendor's rate-limit code, a timeout, a dropped connection), and everything it does not
name is "other". The set is closed so that a metric labelled with it stays bounded.
"""

from __future__ import annotations

from typing import Literal, get_args

Reason = Literal[
    "timeout",  # no answer (or no connection, or no free worker) within the provider's timeout
    "rate_limited",  # the vendor refused for rate, concurrency or quota (HTTP 429 and kin)
    "auth",  # the vendor refused the credentials (HTTP 401/403, a rejected token or signature)
    "refused",  # the vendor answered with another error
    "connection",  # the connection could not be made, or dropped mid-stream
    "bad_answer",  # the vendor answered something malformed, off its protocol, or empty
    "worker",  # an embedded worker (a local decoder or synthesiser process) failed
    "other",  # anything else (bad input, a misuse of the stream)
]
REASONS: tuple[Reason, ...] = get_args(Reason)


def http_reason(status: int) -> Reason:
    """The reason for an HTTP error status from a vendor."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    return "refused"
