"""Reading a cloud provider's HTTP answer without trusting its size."""

from __future__ import annotations

import asyncio

import aiohttp

from asr_tts.tts.base import TTSError


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or TTSError as soon as it grows past `limit` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise TTSError(f"answer of {resp.content_length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise TTSError(f"answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def post_capped(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    limit: int,
    name: str,
) -> tuple[int, bytes]:
    """POST `body` and read the answer (status, body) within `timeout_s` and `limit` bytes;
    TTSError naming provider `name` when the answer is late or the connection fails."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            session.post(url, data=body, headers=headers) as resp,
        ):
            return resp.status, await read_capped(resp, limit)
    except TimeoutError as exc:
        raise TTSError(f"{name}: no answer within {timeout_s} s", reason="timeout") from exc
    except aiohttp.ClientError as exc:
        # str(), not repr(): the repr of some aiohttp errors carries the request headers.
        raise TTSError(f"{name}: {type(exc).__name__}: {exc}", reason="connection") from exc
