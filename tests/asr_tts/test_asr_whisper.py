"""The Whisper provider ("embedded") apart from the relay: its text clean-up, the languages it
takes, that loading the model reaches for no network, and its worker processes (a killed or
stuck one replaced, none left after close()). Through the relay: tests/relay/test_voice_whisper.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asr_tts.asr.base import ASRError
from asr_tts.asr.whisper import WhisperASR, language_of
from asr_tts.asr.whisper_worker import ZH_PROMPT, decode_options, without_repeats
from relay.auth.handshake import spoken_language
from tests.asr_tts.conftest import Speak
from tests.asr_tts.test_asr_pocketsphinx import (  # noqa: F401 - no_process_left: autouse
    decoder_processes,
    feed_all,
    no_process_left,
    wait_until_gone,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("水通,水通,水通,水通,水通", "水通"),
        ("打开灯，打开灯，打开灯", "打开灯"),
        ("the the the the light", "the light"),
        ("哈哈哈哈哈哈", "哈哈"),
        ("啊啊啊啊啊", "啊"),
        ("Thank you. Thank you. Thank you.", "Thank you."),
        # What people say twice, or once, stays as it is.
        ("no, no", "no, no"),
        ("turn on the light", "turn on the light"),
        ("现在几点了", "现在几点了"),
        ("bookkeeper", "bookkeeper"),
    ],
)
def test_repeated_runs_are_kept_once(text: str, kept: str) -> None:
    assert without_repeats(text) == kept


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US", "en"),
        ("zh_TW", "zh"),
        ("*", ""),
        ("", ""),
        ("fr", "fr"),
    ],
)
def test_the_handshake_reads_the_primary_language(header: str, language: str) -> None:
    assert spoken_language(header) == language


def test_whisper_takes_auto_zh_and_en_and_nothing_else() -> None:
    assert [language_of(t) for t in ("auto", "zh", "cmn", "zh-CN", "en-GB", "fr", "", None)] == [
        "auto",
        "zh",
        "zh",
        "zh",
        "en",
        None,
        None,
        None,
    ]
    with pytest.raises(ValueError, match="language"):
        WhisperASR(language="fr")
    asr = WhisperASR(language="en")
    assert (asr.language(None), asr.language("zh"), asr.language("fr")) == ("en", "zh", "en")


def test_loading_and_decoding_reach_for_no_network(speak: Speak) -> None:
    # The worker's own functions in a fresh interpreter whose sockets refuse every
    # connection and every name lookup, and count them.
    pcm = Path(os.environ.get("TMPDIR", "/tmp")) / f"whisper-{os.getpid()}.pcm"
    pcm.write_bytes(speak("turn on the light", "en-us"))
    script = textwrap.dedent(
        f"""
        import os, socket
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(args)
            raise OSError("no network in this test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.getaddrinfo = refuse
        socket.create_connection = refuse
        from asr_tts.asr import whisper_worker
        whisper_worker.load("", 1, ("zh", "en"))
        text = whisper_worker.finish(open({str(pcm)!r}, "rb").read(), True, "en")
        print(repr(text), os.environ["HF_HUB_OFFLINE"], len(attempts))
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    finally:
        pcm.unlink()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["'Turn", "on", "the", "light.'", "1", "0"], done.stdout


async def test_a_killed_or_stuck_worker_is_replaced(speak: Speak) -> None:
    asr = WhisperASR(pool_size=1, timeout_s=60, threads=1)
    command = speak("turn on the light", "en-us")
    try:
        stream = await asr.open(language="en")
        await feed_all(stream, command)
        assert await stream.finish() == "Turn on the light."
        (first,) = decoder_processes()
        # Killed while it decodes: the utterance fails, the next one gets a new worker.
        stream = await asr.open(language="en")
        await feed_all(stream, command * 4)
        finishing = asyncio.create_task(stream.finish())
        await asyncio.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ASRError, match="the decoder process died") as info:
            await finishing
        assert info.value.reason == "worker"
        assert await wait_until_gone({first}) == set()
        # Stuck past timeout_s: its process is ended and a new one takes its place.
        stream = await asr.open(language="en")
        (second,) = decoder_processes() - {first}
        await feed_all(stream, command * 4)
        asr.timeout_s = 0.05
        with pytest.raises(ASRError, match="longer than 0.05 s") as info:
            await stream.finish()
        assert info.value.reason == "timeout"
        assert await wait_until_gone({second}) == set()
        asr.timeout_s = 60
        stream = await asr.open(language="en")
        await feed_all(stream, command)
        assert await stream.finish() == "Turn on the light."
    finally:
        asr.close()


def test_decoding_variants_change_only_what_they_name() -> None:
    shipped = {"beam_size": 5, "temperature": 0.0}
    assert decode_options("zh") == decode_options("en") == shipped
    assert decode_options("zh", "zh_prompt") == shipped | {"initial_prompt": ZH_PROMPT}
    assert decode_options("en", "zh_prompt") == shipped
    assert decode_options("en", "fallback")["temperature"] == (0.0, 0.2, 0.4, 0.6)
    with pytest.raises(ASRError, match="WHISPER_VARIANT='beam9'"):
        decode_options("en", "beam9")
