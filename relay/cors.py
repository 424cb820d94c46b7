"""Browser origins (docs/protocol.md §1.8): which pages may call the OTA check from another
origin (CORS, `[ota] cors_origins`), and may open the device WebSocket when
`[server] check_origin` is on. Pure: strings in, header values out; no credentials ever.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ANY = "*"
ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_AGE_S = 600  # how long a browser may reuse a preflight answer
MAX_REQUEST_HEADERS = 1024  # characters of Access-Control-Request-Headers reflected at most
# `scheme://host[:port]`: a DNS name or IPv4 address, or an IPv6 literal in brackets.
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE,
)
_DEFAULT_PORT = {"http": "80", "https": "443"}
# RFC 9110 §5.6.2 tokens, comma-separated (browsers send `client-id,content-type,device-id`).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
HEADER_LIST = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*")


def origin_problem(entry: str) -> str:
    """Why `entry` cannot be a `[ota] cors_origins` entry; "" when it can."""
    if entry == ANY:
        return ""
    if not entry.strip():
        return 'empty; give "*" or an origin such as https://app.example'
    scheme, sep, rest = entry.partition("://")
    if not sep or scheme.lower() not in _DEFAULT_PORT:
        return f'{entry!r} is neither "*" nor an http:// or https:// origin'
    if any(c in rest for c in "/?#"):
        return f"{entry!r} has a path, query or trailing slash; an origin is scheme://host[:port]"
    m = _ORIGIN.fullmatch(entry)
    if m is None or (m["port"] is not None and not 0 < int(m["port"]) <= 65535):
        return f"{entry!r} is not scheme://host[:port]"
    return ""


def _same_origin(entry: str, origin: str) -> bool:
    # Browsers serialise an origin with a lower-case scheme and host and without the default
    # port; a configured entry may be written otherwise (`https://App.example:443`).
    a, b = _ORIGIN.fullmatch(entry), _ORIGIN.fullmatch(origin)
    if a is None or b is None:
        return False
    scheme = a["scheme"].lower()
    return (
        scheme == b["scheme"].lower()
        and a["host"].lower() == b["host"].lower()
        and (a["port"] or _DEFAULT_PORT[scheme]) == (b["port"] or _DEFAULT_PORT[scheme])
    )


def allow_origin(origins: Sequence[str], origin: str) -> str | None:
    """The `Access-Control-Allow-Origin` for a request from `origin`: "*" when every origin is
    allowed, else `origin` itself when it is listed; None when it is not allowed."""
    if ANY in origins:
        return ANY
    return origin if any(_same_origin(entry, origin) for entry in origins) else None


def origin_allowed(origins: Sequence[str], origin: str | None) -> bool:
    """A request without `Origin` (a device, not a browser) is always allowed."""
    return origin is None or allow_origin(origins, origin) is not None


def answer_headers(origins: Sequence[str], origin: str | None) -> dict[str, str]:
    """CORS headers for any answer to a request from `origin` (none without `Origin`)."""
    if origin is None:
        return {}
    allowed = allow_origin(origins, origin)
    headers = {} if ANY in origins else {"Vary": "Origin"}  # the answer depends on Origin
    if allowed is not None:
        headers["Access-Control-Allow-Origin"] = allowed
    return headers


def requested_headers(value: str) -> str | None:
    """`Access-Control-Request-Headers` to reflect, normalised (`a, b`); None when it is not a
    plain list of header names or is over `MAX_REQUEST_HEADERS` characters."""
    value = value.strip()
    if not value:
        return ""
    if len(value) > MAX_REQUEST_HEADERS or not HEADER_LIST.fullmatch(value):
        return None
    return ", ".join(name.strip() for name in value.split(","))


def preflight_headers(allow_headers: str) -> dict[str, str]:
    """What an allowed preflight is answered with (besides `answer_headers`)."""
    headers = {
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Max-Age": str(MAX_AGE_S),
    }
    if allow_headers:
        headers["Access-Control-Allow-Headers"] = allow_headers
    return headers
