"""Builds the speech providers named in the configuration: TTS (the speaker) and the
microphone pipeline (ASR, VAD, audio batcher)."""

from __future__ import annotations

import logging
from concurrent.futures import Executor

import aiohttp

from asr_tts.asr.aliyun import AliyunASR
from asr_tts.asr.base import ASRError, ASRProvider
from asr_tts.asr.dashscope import DashScopeASR
from asr_tts.asr.openai import OpenAIASR
from asr_tts.asr.pocketsphinx import PocketsphinxASR
from asr_tts.asr.tencent import TencentASR
from asr_tts.asr.volcengine import VolcengineASR
from asr_tts.asr.whisper import WhisperASR, check_model
from asr_tts.nls_token import NLSTokens
from asr_tts.segmenter import SegmenterConfig
from asr_tts.tts.aliyun import AliyunTTS
from asr_tts.tts.base import TTSProvider
from asr_tts.tts.cache import FrameCache
from asr_tts.tts.dashscope import DashScopeTTS
from asr_tts.tts.espeak import EmbeddedTTS
from asr_tts.tts.kokoro import KokoroTTS
from asr_tts.tts.kokoro_files import ModelFileError
from asr_tts.tts.openai import OpenAITTS
from asr_tts.tts.speaker import Speaker
from asr_tts.tts.tencent import TencentTTS
from asr_tts.tts.volcengine import VolcengineTTS
from asr_tts.vad import SileroModel
from metrics.registry import Metrics
from relay.config.schema import ASRConfig, Config, ConfigError
from relay.device.audio_batcher import AudioBatcher
from relay.device.listener import VoiceDeps

log = logging.getLogger(__name__)


def build_speaker(
    config: Config, session: aiohttp.ClientSession, executor: Executor, metrics: Metrics
) -> Speaker:
    """The TTS registry keyed by the name a business sends in `tts_provider` (§2.2)."""
    tts = config.tts
    espeak = EmbeddedTTS(max_concurrency=tts.max_concurrency, timeout_s=tts.timeout_s)
    # A business's tts_provider "embedded" names the relay's own voice, whichever it is.
    providers: dict[str, TTSProvider] = {"espeak": espeak, "embedded": espeak}
    if tts.provider == "embedded":
        providers["embedded"] = build_kokoro(config) or espeak
    if tts.openai.base_url:
        providers["openai"] = OpenAITTS(
            tts.openai.base_url,
            tts.openai.api_key,
            session=session,
            model=tts.openai.model,
            default_voice=tts.openai.voice,
            timeout_s=tts.openai.timeout_s,
        )
    if tts.huoshan.appid and tts.huoshan.token:
        providers["huoshan"] = VolcengineTTS(
            appid=tts.huoshan.appid,
            token=tts.huoshan.token,
            session=session,
            url=tts.huoshan.url,
            cluster=tts.huoshan.cluster,
            default_voice=tts.huoshan.voice,
            timeout_s=tts.huoshan.timeout_s,
        )
    if tts.aliyun.appkey and tts.aliyun.access_key_id and tts.aliyun.access_key_secret:
        a = tts.aliyun
        providers["aliyun"] = AliyunTTS(
            appkey=a.appkey,
            tokens=_nls_tokens(a.access_key_id, a.access_key_secret, a.token_url, session),
            session=session,
            url=a.url,
            default_voice=a.voice,
            volume=a.volume,
            timeout_s=a.timeout_s,
        )
    if tts.tencent.secret_id and tts.tencent.secret_key:
        providers["tencent"] = TencentTTS(
            secret_id=tts.tencent.secret_id,
            secret_key=tts.tencent.secret_key,
            session=session,
            url=tts.tencent.url,
            region=tts.tencent.region,
            default_voice=tts.tencent.voice,
            volume=tts.tencent.volume,
            timeout_s=tts.tencent.timeout_s,
        )
    if tts.dashscope.api_key:
        providers["dashscope"] = DashScopeTTS(
            api_key=tts.dashscope.api_key,
            session=session,
            url=tts.dashscope.url,
            model=tts.dashscope.model,
            default_voice=tts.dashscope.voice,
            volume=tts.dashscope.volume,
            timeout_s=tts.dashscope.timeout_s,
        )
    names = set(providers)

    def on_synth(name: str, seconds: float) -> None:
        metrics.tts_latency.labels(name if name in names else "other").observe(seconds)

    return Speaker(
        providers,
        tts.provider,
        executor,
        cache=FrameCache(tts.cache_mb * 1024 * 1024) if tts.cache_mb else None,
        on_fallback=lambda _requested: metrics.tts_fallbacks.inc(),
        on_synth=on_synth,
        on_encode=metrics.tts_encode.observe,
        first_max_chars=tts.first_segment_chars or None,
    )


def build_kokoro(config: Config) -> KokoroTTS | None:
    """Kokoro with its files checked; None (espeak speaks) if they are bad and `[tts] fallback
    = "espeak"`, else ConfigError naming the bad file: the relay refuses to start."""
    tts = config.tts
    try:
        return KokoroTTS(
            pool_size=tts.pool_size,
            threads=tts.threads,
            timeout_s=tts.timeout_s,
            voices={"zh": tts.voice.zh, "en": tts.voice.en},
            voices_dir=tts.voices_dir or None,
        )
    except ModelFileError as exc:
        if tts.fallback != "espeak":
            raise ConfigError(f"tts.provider: {exc}") from exc
        # The message names the bad file; a traceback would add nothing.
        log.error("KOKORO CANNOT SPEAK, espeak-ng speaks instead ([tts] fallback): %s", exc)  # noqa: TRY400
        return None


def build_asr(config: Config, session: aiohttp.ClientSession) -> ASRProvider:
    """The configured speech recogniser."""
    asr = config.asr
    if asr.provider == "openai":
        return OpenAIASR(
            asr.openai.base_url,
            asr.openai.api_key,
            session=session,
            model=asr.openai.model,
            timeout_s=asr.openai.timeout_s,
        )
    if asr.provider == "volcengine":
        v = asr.volcengine
        return VolcengineASR(
            appid=v.appid,
            token=v.token,
            cluster=v.cluster,
            session=session,
            url=v.url,
            timeout_s=v.timeout_s,
        )
    if asr.provider == "aliyun":
        a = asr.aliyun
        return AliyunASR(
            appkey=a.appkey,
            tokens=_nls_tokens(a.access_key_id, a.access_key_secret, a.token_url, session),
            session=session,
            url=a.url,
            timeout_s=a.timeout_s,
        )
    if asr.provider == "tencent":
        t = asr.tencent
        return TencentASR(
            appid=t.appid,
            secret_id=t.secret_id,
            secret_key=t.secret_key,
            session=session,
            engine_model_type=t.engine_model_type,
            url=t.url,
            timeout_s=t.timeout_s,
        )
    if asr.provider == "dashscope":
        d = asr.dashscope
        return DashScopeASR(
            api_key=d.api_key, session=session, url=d.url, model=d.model, timeout_s=d.timeout_s
        )
    return _embedded(asr)


def _nls_tokens(
    access_key_id: str, access_key_secret: str, url: str, session: aiohttp.ClientSession
) -> NLSTokens:
    """An Aliyun NLS token source. ASR and TTS hold one each: two CreateToken calls a day
    (a token lives for hours) cost less than a registry shared across the builders."""
    return NLSTokens(
        access_key_id=access_key_id, access_key_secret=access_key_secret, url=url, session=session
    )


def _embedded(asr: ASRConfig) -> ASRProvider:
    """Whisper base, or pocketsphinx when asked for (or as the configured fallback)."""
    if asr.provider == "embedded" and asr.grammar_words:
        # Before Whisper, "embedded" was pocketsphinx and grammar_words its command grammar.
        log.warning('[asr] grammar_words is a pocketsphinx setting: using provider "pocketsphinx"')
    if asr.uses_whisper:
        try:
            check_model(asr.model_dir)
            return WhisperASR(
                pool_size=asr.pool_size,
                timeout_s=asr.timeout_s,
                language=asr.language or "auto",
                threads=asr.threads,
                model_dir=asr.model_dir,
            )
        except ASRError as exc:
            if not asr.fallback:
                raise ConfigError(f"asr.provider: {exc}") from exc
            log.error(  # noqa: TRY400 - the message says it all, a traceback would not help
                "EMBEDDED ASR UNAVAILABLE: %s. Falling back to pocketsphinx: US English only", exc
            )
    return PocketsphinxASR(
        pool_size=asr.pool_size,
        timeout_s=asr.timeout_s,
        grammar_words=asr.grammar_words or None,
    )


def _default_language(asr: ASRConfig) -> str | None:
    """What a listener asks for when its device names no language: Whisper holds its own
    default (auto), the cloud recognisers are given the configured one."""
    if asr.uses_whisper or asr.language in ("", "auto"):
        return None
    return asr.language


def build_voice(
    config: Config, session: aiohttp.ClientSession, executor: Executor, metrics: Metrics
) -> VoiceDeps:
    """Everything a device's microphone pipeline needs."""
    vad = config.vad
    return VoiceDeps(
        asr=build_asr(config, session),
        vad=SileroModel(threads=1),
        segmenter=SegmenterConfig(
            threshold=vad.threshold,
            min_speech_s=vad.min_speech_s,
            min_silence_s=vad.min_silence_s,
            early_silence_s=vad.early_silence_s,
            pre_roll_s=vad.pre_roll_s,
            max_utterance_s=vad.max_utterance_s,
        ),
        batcher=AudioBatcher(
            executor, max_in_flight=vad.audio_threads, window_s=vad.batch_window_ms / 1000
        ),
        metrics=metrics,
        max_late_s=vad.max_late_ms / 1000,
        language=_default_language(config.asr),
    )
