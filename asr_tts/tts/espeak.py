"""The light offline TTS provider "espeak": espeak-ng in a subprocess, Mandarin through pinyin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re

from asr_tts.codec import pcm_from_wav
from asr_tts.pcm import Pcm
from asr_tts.tts.base import TTSError, Voice, VoiceList

log = logging.getLogger(__name__)
# Reads pinyin with tone digits; Debian's plain "cmn" voice reads the digits in English.
MANDARIN_VOICE = "cmn-latn-pinyin"
_BASE_WPM = 175
_BASE_PITCH = 50
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
# Full-width punctuation to what the pinyin voice pauses on; quotes and brackets are dropped.
_FULL_WIDTH = str.maketrans(
    {"，": ", ", "、": ", ", "。": ". ", "！": "! ", "？": "? ", "；": "; ", "：": ": "}
    | {"…": "... ", "—": ", "}
    | dict.fromkeys("“”‘’「」『』（）《》【】", " ")
)
_SPACE_BEFORE_MARK = re.compile(r" +(?=[,.!?;:])")
_STDERR_LIMIT = 300


def to_pinyin(text: str) -> str:
    """Rewrite the Chinese characters of `text` as tone-numbered pinyin; keep everything else."""
    # Imported on first use: pypinyin's dictionaries are ~55 MiB and ~190k objects that
    # every collection of the garbage collector would walk (docs/performance.md).
    from pypinyin import Style, lazy_pinyin

    words = lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True, v_to_u=True)
    spaced = " ".join(" ".join(words).translate(_FULL_WIDTH).split())
    return _SPACE_BEFORE_MARK.sub("", spaced)


def _scaled(ratio: float, base: int, low: int, high: int) -> int:
    if not math.isfinite(ratio):
        ratio = 1.0
    return max(low, min(high, round(base * ratio)))


def _parse_voices(listing: str) -> frozenset[str]:
    """Language names from `espeak-ng --voices`, without MBROLA voices (they need mbrola)."""
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and not parts[4].startswith("mb/"):
            names.add(parts[1].lower())
    return frozenset(names)


class EmbeddedTTS:
    """TTS provider named "espeak" (`[tts] provider = "espeak"`): espeak-ng, offline, English,
    Mandarin and the many languages espeak-ng has."""

    name = "espeak"

    def __init__(
        self,
        *,
        max_concurrency: int = 4,
        binary: str = "espeak-ng",
        default_voice: str = "en",
        timeout_s: float = 20.0,
    ) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._binary = binary
        self._default_voice = default_voice
        self._timeout_s = timeout_s
        self._voices: frozenset[str] | None = None  # installed voices, listed on first need

    async def synthesize(self, text: str, voice: Voice) -> Pcm:
        """Speak `text` with espeak-ng; raise TTSError if it is missing, fails or times out."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if _CJK.search(text):
                    # pypinyin costs about 1 ms per 100 characters: keep it off the loop.
                    text = await asyncio.to_thread(to_pinyin, text)
                    name = MANDARIN_VOICE
                else:
                    name = await self._voice_name(voice.voice_type)
                args = [
                    "--stdout",
                    "-b1",  # the text is UTF-8, whatever the locale says
                    f"-v{name}",
                    f"-s{_scaled(voice.speed_ratio, _BASE_WPM, 80, 450)}",
                    f"-p{_scaled(voice.pitch_ratio, _BASE_PITCH, 0, 99)}",
                    # "--" ends the options, so text starting with "-" is spoken, not parsed.
                    # Not on stdin: uvloop raises RuntimeError instead of BrokenPipeError when
                    # the child exits before reading its input (MagicStack/uvloop#506).
                    "--",
                    text,
                ]
                wav = await self._run(args)
        except TimeoutError as exc:
            raise TTSError(
                f"{self._binary} gave no result within {self._timeout_s} s", reason="timeout"
            ) from exc
        try:
            return pcm_from_wav(wav)
        except ValueError as exc:
            raise TTSError(
                f"{self._binary} printed an unusable WAV: {exc}", reason="worker"
            ) from exc

    async def voice_list(self) -> VoiceList:
        """espeak-ng's installed voices; Han text is always read by the pinyin voice. Empty,
        with a warning, when espeak-ng cannot be run."""
        defaults = {"zh": MANDARIN_VOICE, "*": self._default_voice}
        try:
            async with asyncio.timeout(self._timeout_s):
                voices = await self._installed()
        except (TTSError, TimeoutError) as exc:
            log.warning("cannot list espeak-ng's voices: %s", str(exc) or "timed out")
            voices = frozenset()
        return VoiceList("espeak-ng", tuple(sorted(voices)), defaults)

    async def _voice_name(self, voice_type: str | None) -> str:
        """The business's voice_type if espeak-ng has such a voice, else the default voice."""
        if not voice_type:
            return self._default_voice
        wanted = voice_type.lower()
        return wanted if wanted in await self._installed() else self._default_voice

    async def _installed(self) -> frozenset[str]:
        """The installed voices, listed once."""
        if self._voices is None:
            listing = await self._run(["--voices"])
            self._voices = _parse_voices(listing.decode(errors="replace"))
        return self._voices

    async def _run(self, args: list[str]) -> bytes:
        """Run espeak-ng with `args` and return its stdout; the process never outlives the call."""
        async with self._slots:
            proc = await self._spawn(args)
            try:
                out, err = await proc.communicate()
            finally:
                await _reap(proc)  # a no-op unless cancelled or timed out
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()[:_STDERR_LIMIT]
            raise TTSError(
                f"{self._binary} exited with status {proc.returncode}: {detail}", reason="worker"
            )
        return out

    async def _spawn(self, args: list[str]) -> asyncio.subprocess.Process:
        """Start espeak-ng with pipes; a cancellation during the start still reaps the child."""
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                self._binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # uvloop kills a child whose creation is cancelled but leaves it unreaped for a
            # while; finish creating it so that it can be killed and reaped here.
            await asyncio.wait([spawn])
            if not spawn.cancelled() and spawn.exception() is None:
                await _reap(spawn.result())
            raise
        except OSError as exc:
            raise TTSError(f"cannot run {self._binary!r}: {exc}", reason="worker") from exc


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the process if it still runs and wait for it: no orphan, no zombie."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
