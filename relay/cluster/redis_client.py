"""The Redis side of the cluster layer that holds no state (relay/cluster/redis.py): the
client and its pool, what counts as Redis being away, reading presence rows, and paging
the device index."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ShardedRedis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.cluster.base import Page, Presence

POOL_SIZE = 64  # connections to Redis per node; more callers wait for one
CLUSTER_POOL_SIZE = 256  # per Redis Cluster node (redis-py's cluster pool fails, not waits)
_LIST_ROUNDS = 8  # refills of a page thinned by expired members

# What a Redis call raises when Redis is away, for every caller that treats it as an outage
# (the cluster layer, the token store). OSError includes TimeoutError from asyncio.timeout().
# RuntimeError: on uvloop, a command written to a pooled socket that the peer reset while it
# sat idle (Redis killed with data in flight) fails with "unable to perform operation on
# <TCPTransport closed=True>; the handler is closed", which redis-py passes on unchanged.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError)


def retried_errors() -> list[type[Exception]]:
    """`retry_on_error` for a client: besides redis-py's own ConnectionError and
    TimeoutError, the RuntimeError of a pooled socket reset while idle is retried once on a
    fresh connection, as a socket closed cleanly is. A new list: redis-py appends to it."""
    return [RuntimeError]


AnyRedis = Redis | ShardedRedis  # a client of one Redis (or a Sentinel's primary), or a cluster


def hosts(urls: str) -> list[tuple[str, int]]:
    """(host, port) of each URL of a comma list (seed nodes or sentinels)."""
    out = []
    for u in urls.split(","):
        parts = urlsplit(u.strip())
        out.append((parts.hostname or "127.0.0.1", parts.port or 6379))
    return out


def open_any(url: str, op_timeout_s: float, mode: str = "single", master: str = "") -> AnyRedis:
    """The client of `[redis] mode`: one Redis, a Redis Cluster from its seed nodes (the
    first URL's credentials and TLS), or the primary the sentinels name `master`."""
    t = op_timeout_s
    if mode == "cluster":
        first, *more = [u.strip() for u in url.split(",")]
        return ShardedRedis.from_url(
            first,
            startup_nodes=[ClusterNode(h, p) for h, p in hosts(",".join(more))] if more else None,
            require_full_coverage=False,  # a shard failing over leaves the others usable
            max_connections=CLUSTER_POOL_SIZE,
            socket_connect_timeout=t,
            socket_timeout=t,
        )
    if mode == "sentinel":
        auth = urlsplit(url.split(",")[0].strip())
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts(url),
            socket_timeout=t,
            socket_connect_timeout=t,
            password=auth.password,
            username=auth.username,
        )
        client: Redis = sentinel.master_for(
            master,
            socket_timeout=t,
            socket_connect_timeout=t,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=retried_errors(),
        )
        return client
    return open_client(url, t)


def open_client(url: str, op_timeout_s: float) -> Redis:
    """A client on a blocking pool: under a burst of pushes, callers wait (bounded by
    `op_timeout_s`) for a connection instead of failing with MaxConnectionsError
    (docs/performance.md §13). One quick retry for a stale pooled socket; outages are the
    supervisor's business."""
    t = op_timeout_s
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=t,
        socket_connect_timeout=t,
        socket_timeout=t,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=retried_errors(),
    )
    # The client owns its pool: closing the client closes every connection of it, the inbox's
    # subscription included, even when a stop cut that connection's own close short.
    return Redis.from_pool(pool)


def text(raw: object) -> str:
    """A Redis reply (bytes, str or None) as text."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")


def stamp(t: float) -> str:
    """connected_at (seconds since the epoch) as a record keeps it: microseconds in base 36
    (ten digits): the rebuild tells the newer of two connections by it, so two connects of
    a device on two nodes within a millisecond are still ordered."""
    return _base36(_us(t))


def _us(t: float) -> int:
    return max(0, round(t * 1_000_000))


def _base36(n: int) -> str:
    sign, n = ("-", -n) if n < 0 else ("", n)
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = _DIGITS[d] + digits
        if not n:
            return sign + digits


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def join_record(
    device_id: str, lease: str, connected_at: float, last_seen: float, session: str, node: str
) -> str:
    """A device's index member (relay.cluster.redis_scripts): the id, NUL, then lease,
    connected_at (`stamp`), last_seen (`since`), session and node, one per line.
    split_record's inverse."""
    ca, seen = stamp(connected_at), since(connected_at, last_seen)
    return f"{device_id}\0{lease}\n{ca}\n{seen}\n{session}\n{node}"


def since(connected_at: float, last_seen: float) -> str:
    """last_seen as a record keeps it: milliseconds after connected_at, base 36 ("0" until
    the device is heard from)."""
    return _base36(round((last_seen - _us(connected_at) / 1_000_000) * 1000))


def split_record(raw: object) -> tuple[str, Presence, str] | None:
    """An index member as (device id, presence, lease); None when it is not a record (the
    bare id of an older relay's index)."""
    device_id, nul, record = text(raw).rpartition("\0")
    parts = record.split("\n", 4)
    if not nul or len(parts) < 5:
        return None
    lease, ca, seen, session, node = parts
    found = parse_presence(device_id, (node, session, ca, seen))
    return None if found is None else (device_id, found, lease)


def parse_presence(device_id: str, row: Sequence[Any]) -> Presence | None:
    """A record's (node, session, connected_at, last_seen) as the scripts keep them; None
    when the row is empty (absent, or its node's lease is gone) or not a record."""
    try:
        node, session, ca, seen = (text(v) for v in row)
        at = int(ca, 36)
        return Presence(device_id, node, session, at / 1e6, (at + 1000 * int(seen, 36)) / 1e6)
    except (TypeError, ValueError):
        return None


async def lookup(
    script: Callable[..., Awaitable[Any]],
    prefix: str,
    ids: Sequence[str],
    *,
    client: AnyRedis | None = None,
) -> list[Presence | None]:
    """The live presence of each of `ids`, in one script call (records and leases read
    together)."""
    rows = await script(keys=[f"{prefix}presence"], args=[prefix, *ids], client=client)
    return [parse_presence(d, row) for d, row in zip(ids, rows, strict=True)]


def after(cursor: str | None) -> str:
    """The ZRANGEBYLEX start of the members past every member of device `cursor` (its
    member is the id and a NUL, then the record: all sort below the id and a 0x01)."""
    return "-" if cursor is None else "[" + cursor + "\x01"


async def list_page(
    r: AnyRedis, script: Callable[..., Awaitable[Any]], prefix: str, cursor: str | None, limit: int
) -> Page:
    """A page of `{prefix}presence` by id from `cursor`, in one script call per round: the
    members carry the records, those whose node's lease is gone are skipped (the page
    refilled) and removed."""
    out: list[Presence] = []
    start, last = after(cursor), ""
    for _ in range(_LIST_ROUNDS):
        want = limit - len(out)
        last_member, read, *rows = await script(
            keys=[f"{prefix}presence"], args=[prefix, start, want], client=r
        )
        out += [p for row in rows if (p := parse_presence(text(row[0]), row[1:])) is not None]
        if not read:
            return Page(out, None)
        last = member_id(last_member)
        if read < want:
            return Page(out, None)
        if len(out) >= limit:
            break
        start = "(" + text(last_member)
    return Page(out, last)


def member_id(raw: object) -> str:
    """The device id an index member names (a bare id, an older relay's, names itself)."""
    device_id, nul, _ = text(raw).rpartition("\0")
    return device_id if nul else text(raw)
