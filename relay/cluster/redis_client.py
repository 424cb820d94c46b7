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


def split_record(raw: object) -> list[Any]:
    """A device record (relay.cluster.redis_scripts: lease, connected_at, last_seen,
    session and node, one per line) as (node, session, connected_at, last_seen, lease);
    all None when absent or not a record."""
    parts = text(raw).split("\n", 4)
    if raw is None or len(parts) < 5:
        return [None] * 5
    lease, connected_at, last_seen, session, node = parts
    return [node, session, connected_at, last_seen, lease]


def join_record(lease: str, connected_at: float, last_seen: float, session: str, node: str) -> str:
    """A device record as the scripts store it (split_record's inverse), the numbers as
    redis-py would send them (repr), so a claim sends one argument per device."""
    return f"{lease}\n{connected_at!r}\n{last_seen!r}\n{session}\n{node}"


def parse_presence(device_id: str, row: Sequence[Any]) -> Presence | None:
    """A row of the lookup script (node, session, connected_at, last_seen); None when the
    device is absent, its node's lease is gone, or the record was not written by us."""
    try:
        node, session, connected_at, last_seen = row
        return Presence(device_id, text(node), text(session), float(connected_at), float(last_seen))
    except (TypeError, ValueError):
        return None


async def lookup(
    script: Callable[..., Awaitable[Any]],
    prefix: str,
    ids: Sequence[str],
    *,
    prune: bool = False,
    client: AnyRedis | None = None,
) -> list[Presence | None]:
    """The live presence of each of `ids`, in one script call (records and leases read
    together); with `prune`, index members whose record is gone or dead are removed."""
    keys = [f"{prefix}devices", *(f"{prefix}dev:{d}" for d in ids)]
    rows = await script(keys=keys, args=[prefix, int(prune), *ids], client=client)
    return [parse_presence(d, row) for d, row in zip(ids, rows, strict=True)]


async def list_page(
    r: AnyRedis, script: Callable[..., Awaitable[Any]], prefix: str, cursor: str | None, limit: int
) -> Page:
    """A page of `{prefix}devices` by id from `cursor`, with members whose record expired or
    whose node's lease is gone skipped (the page refilled) and removed by the lookup."""
    index = f"{prefix}devices"
    out: list[Presence] = []
    start = "-" if cursor is None else "(" + cursor
    for _ in range(_LIST_ROUNDS):
        want = limit - len(out)
        ids = [text(raw) for raw in await r.zrangebylex(index, start, "+", 0, want)]
        if not ids:
            return Page(out, None)
        found = await lookup(script, prefix, ids, prune=True, client=r)
        out += [p for p in found if p is not None]
        if len(ids) < want:
            return Page(out, None)
        if len(out) >= limit:
            break
        start = "(" + ids[-1]
    return Page(out, ids[-1])
