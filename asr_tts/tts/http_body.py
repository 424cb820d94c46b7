"""Reading a cloud provider's HTTP answer without trusting its size."""

from __future__ import annotations

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
