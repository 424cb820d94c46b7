"""The inside of one embedded-ASR worker process: one pocketsphinx decoder and its utterance.

asr_tts.asr.pocketsphinx starts each worker with the "spawn" method and calls the functions
below in it, one call at a time. Whatever this module imports, every worker imports, so it
stays on pocketsphinx, numpy and the standard library (plus asr_tts.asr.base for ASRError,
which imports no more). The decoder lives in a module global: the process itself is the
resource its parent owns, and it never holds more than this one decoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from pocketsphinx import Decoder

from asr_tts.asr.base import ASRError
from asr_tts.workerproc import init as init  # the pool starts each worker with it

SEARCH = "commands"
_CMN_SEARCH = "cmn"  # one word: a search that costs next to nothing while features are made
_SLICE_BYTES = 1920  # 60 ms of 16 kHz s16le: the live cepstral mean moves slice by slice
# Digital silence (all-zero samples, as espeak-ng or Opus DTX produce) has no log energy and
# drags the live cepstral mean; a -64 dBFS noise floor fixes it. Measured on espeak-ng
# commands with the grammar: 25/36 recognised without it, 33/36 with it.
_DITHER_RMS = 20.0


@dataclass
class _State:
    """This process's decoder and where its utterance stands."""

    decoder: Decoder
    batch: bool  # command grammar: each utterance is decoded in one call at finish()
    in_utterance: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


_state: _State | None = None


def load(grammar: str | None, vocabulary: frozenset[str]) -> int:
    """Build this process's decoder (full vocabulary when `grammar` is None); return the pid."""
    global _state
    _state = _State(_build(grammar, vocabulary), batch=grammar is not None)
    return os.getpid()


def _build(grammar: str | None, vocabulary: frozenset[str]) -> Decoder:
    try:
        # FATAL: at ERROR, pocketsphinx prints a line for every utterance outside the grammar;
        # our own errors carry what went wrong.
        if grammar is None:
            # Without the second pass (fwdflat, bestpath) end_utt() takes 10 ms instead of
            # ~480 ms; recognition was no worse on our test phrases.
            return Decoder(loglevel="FATAL", fwdflat=False, bestpath=False)
        decoder = Decoder(loglevel="FATAL", lm=None)
    except (RuntimeError, ValueError) as exc:
        raise ASRError(f"cannot load the pocketsphinx decoder: {exc}") from exc
    missing = sorted(w for w in vocabulary if decoder.lookup_word(w) is None)
    if missing:
        raise ASRError(f"grammar words missing from the pronunciation dictionary: {missing}")
    try:
        decoder.add_jsgf_string(SEARCH, grammar)
        word = min(vocabulary)
        decoder.add_jsgf_string(_CMN_SEARCH, f"#JSGF V1.0;\ngrammar cmn;\npublic <w> = {word} ;\n")
        decoder.activate_search(SEARCH)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ASRError(f"cannot load the command grammar: {exc}") from exc
    return decoder


def process(pcm: bytes, first: bool) -> None:
    """Decode more audio of the utterance (full vocabulary); `first` begins a new one."""
    state = _begin(first)
    _decode(state.decoder, _dither(state, pcm))


def _decode(decoder: Decoder, data: bytes) -> None:
    """Decode audio of the utterance as it would have arrived live, in 60 ms slices."""
    for i in range(0, len(data), _SLICE_BYTES):
        decoder.process_raw(data[i : i + _SLICE_BYTES], False, False)


def _own_cmn(decoder: Decoder, data: bytes) -> None:
    """Restart the utterance with the cepstral mean of `data` (a pass under a one-word search).

    The whole utterance in one full_utt call under the command search, the simpler way to
    the same end, heard "turn on the light" in an espeak-ng "turn off the light" of the voice
    tests that this and the live slices recognise right.
    """
    decoder.end_utt()  # the one _begin() started, still empty
    decoder.activate_search(_CMN_SEARCH)
    decoder.start_utt()
    decoder.process_raw(data, False, True)
    cmn = decoder.get_cmn()
    decoder.end_utt()
    decoder.activate_search(SEARCH)
    decoder.set_cmn(cmn)
    decoder.start_utt()


def finish(pcm: bytes, first: bool) -> str:
    """Decode the last audio, end the utterance and return the best hypothesis ("" if none).

    With the command grammar `pcm` is the whole utterance, normalised with its own cepstral
    mean, so the same audio always gives the same text, whatever the decoder heard before.
    """
    state = _begin(first)
    data = _dither(state, pcm)
    if state.batch and data:
        _own_cmn(state.decoder, data)
    _decode(state.decoder, data)
    state.decoder.end_utt()
    state.in_utterance = False
    hyp = state.decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def _begin(first: bool) -> _State:
    """The loaded state; on an utterance's first call, end any left over and start anew."""
    state = _state
    if state is None:
        raise ASRError("no decoder loaded in this worker")
    if first:
        if state.in_utterance:  # left over by a cancelled or timed-out utterance
            state.decoder.end_utt()
        state.decoder.start_utt()
        state.in_utterance = True
        state.rng = np.random.default_rng(0)  # the same audio decodes the same way
    return state


def _dither(state: _State, pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    x += state.rng.standard_normal(x.size, dtype=np.float32) * _DITHER_RMS
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
