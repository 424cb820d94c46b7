"""The light offline ASR provider "pocketsphinx": US English, decoders in worker processes.

pocketsphinx 5.1.1 holds the GIL while it decodes (bench/asr_loop_stall.py: 40-60 ms at a
time with the full vocabulary, up to 105 ms with the cores busy; 100 ms for the cepstral-mean
pass over 13 s of commands), so each decoder runs in a worker process of the pool in
asr_tts.asr.pool (asr_tts.asr.pocketsphinx_worker inside). Workers take 0.5 s to start and
~145 MB resident each with the full vocabulary, 0.25 s and ~75 MB with a command grammar (in
this process the decoders took ~86 and ~37 MB).

- Full vocabulary (real-time factor 0.15-0.6 here): audio is decoded while it arrives, in
  250 ms calls, and the live cepstral mean carries over from one utterance to the next (in
  the same worker), as pocketsphinx does for live audio.
- Command grammar (real-time factor ~0.02): feed() only buffers; finish() decodes the
  whole utterance in one call with its own cepstral mean, so the same audio always gives
  the same text, whatever the decoder heard before. On espeak-ng commands that scored 55/57
  from the first utterance on, where streaming scored 51/57 on a fresh decoder (57/57 only
  once warmed up by earlier utterances).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from asr_tts.asr import pocketsphinx_worker as asr_worker
from asr_tts.asr.pool import Backend, DecoderPool

_WORD = re.compile(r"[a-z']+\Z")


def command_grammar(phrases: Sequence[str]) -> str:
    """A JSGF grammar accepting one or more of `phrases` (each a word or a phrase) in a row."""
    alternatives: dict[str, None] = {}
    for phrase in phrases:
        words = phrase.lower().split()
        if not words or not all(_WORD.match(w) for w in words):
            raise ValueError(f"grammar entry {phrase!r} is not made of plain English words")
        alternatives[" ".join(words)] = None
    if not alternatives:
        raise ValueError("grammar_words is empty")
    rule = " | ".join(alternatives)
    return f"#JSGF V1.0;\ngrammar {asr_worker.SEARCH};\npublic <utterance> = ( {rule} )+ ;\n"


class PocketsphinxASR(DecoderPool):
    """ASR provider named "pocketsphinx": offline, US English only; `language` is ignored."""

    name = "pocketsphinx"

    def __init__(
        self,
        pool_size: int = 2,
        timeout_s: float = 20.0,
        grammar_words: Sequence[str] | None = None,
    ) -> None:
        grammar = None if grammar_words is None else command_grammar(grammar_words)
        vocabulary = frozenset(w for p in grammar_words or () for w in p.lower().split())
        backend = Backend(
            label="pocketsphinx",
            load=asr_worker.load,
            load_args=(grammar, vocabulary),
            finish=asr_worker.finish,
            # With the grammar an utterance is decoded in one call at finish() (see the worker).
            process=asr_worker.process if grammar is None else None,
        )
        super().__init__(backend, pool_size=pool_size, timeout_s=timeout_s)
