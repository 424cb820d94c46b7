"""A byte-bounded LRU cache of encoded downlink frames, one entry per spoken sentence."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from asr_tts.tts.base import Voice
from protocol.audio_format import AudioFormat

Frames = tuple[bytes, ...]
# What changes the frames of a sentence: the provider that speaks it, the voice settings, the
# downlink format and the text. Voice.provider is left out: the resolved provider name counts.
CacheKey = tuple[str, tuple[str | None, float, float], AudioFormat, str]


def cache_key(provider: str, voice: Voice, fmt: AudioFormat, text: str) -> CacheKey:
    """The key of `text` spoken by the provider named `provider` with `voice`, framed as `fmt`."""
    return provider, (voice.voice_type, voice.speed_ratio, voice.pitch_ratio), fmt, text


class FrameCache:
    """LRU of sentence frames bounded by their total size; for one event loop, not thread-safe.

    `hits`, `misses`, `evictions` and `bytes` (frame bytes held now) are read by metrics.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[Frames, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Frames | None:
        """The frames stored under `key`, now the most recently used; None (a miss) if absent."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: CacheKey, frames: Sequence[bytes]) -> None:
        """Store `frames` under `key`, evicting the least recently used entries to make room.

        Frames larger than `max_bytes` in total, or no frames at all, are not stored.
        """
        size = sum(len(f) for f in frames)
        if not frames or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self.bytes + size > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
            self.evictions += 1
        self._entries[key] = (tuple(frames), size)
        self.bytes += size
