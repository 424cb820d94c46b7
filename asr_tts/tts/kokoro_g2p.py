"""Text to Kokoro phonemes: runs by script, Mandarin through misaki, English by misaki's lexicon.

Each run of Han characters is Mandarin, each run of Latin letters English; digits, spaces and
punctuation join the run they follow (or the first run). Other scripts (kana, Arabic, ...)
are dropped and reported, so the caller can warn.

- Mandarin: misaki's `ZHG2P` (Apache-2.0) as Kokoro v1.0 was trained with it: cn2an reads
  digits, dates and percentages in Chinese, jieba cuts words, pypinyin gives the readings.
  Only `misaki.zh` is imported; misaki's English G2P would load spaCy (whose model it
  downloads) and link GPL libraries (phonemizer-fork, espeakng-loader) into the process.
- English: each word from misaki's US lexicon (its gold and silver dictionaries, the word
  rules of `misaki.en` ported without spaCy: asr_tts.tts.kokoro_lexicon); the words it does not
  know (numbers, names, anything with a digit or symbol), a run of them at a time, from the IPA
  of the espeak-ng program, run as a subprocess as the espeak provider does (no GPL code in
  the process, no network), mapped to Kokoro's symbols with the table of misaki's own espeak
  fallback (misaki/espeak.py, Apache-2.0). Clause punctuation is kept.

  Chosen by measurement (docs/performance.md, "English phonemes and the Mandarin voice"):
  Whisper base judged the 20 English phrases of bench/tts_intelligibility.py spoken through
  the relay, both G2Ps in the same run: WER 0.9 % with the lexicon (1 word of 106), 5.7 %
  with espeak-ng's IPA for every word ("I am a friendly little robot" heard as "in my
  friendly little robot", "want to" as "wanna"). The lexicon is what Kokoro was trained on
  (misaki's G2P is gold, then silver, then espeak), so its phoneme strings and stress marks
  are the ones the model knows; espeak-ng's IPA, mapped, differs in vowels (kˈɪʧən for
  kˈɪʧᵊn) and joins function words ("ɔnðə"). It is also faster: no subprocess for a clause
  of known words (~0-1 ms against 8-15 ms). `KOKORO_EN_G2P=espeak` in the relay's
  environment (inherited by the workers) speaks every English word through espeak-ng as
  before, for comparison.

This module runs in the synthesis worker processes (asr_tts.tts.kokoro_worker).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from typing import Any

from asr_tts.tts.kokoro_lexicon import Lexicon, starts_with_vowel

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_LATIN = r"A-Za-z\u00c0-\u024f"
_RUN = re.compile(rf"([{_HAN}]+)|([{_LATIN}]+)|([^{_HAN}{_LATIN}]+)")
# What neither language speaks: letters of other scripts (kana, Arabic, Cyrillic, ...).
_FOREIGN = re.compile(rf"[^\W\d_{_HAN}{_LATIN}]")
# A clause ends at punctuation before a space or the end ("7:30" and "3.5" stay whole).
_CLAUSE = re.compile(r"(.*?)([,;:.!?]+)(?=\s|\Z)|(.+)", re.DOTALL)
_ESPEAK_TIMEOUT_S = 10.0
# English words: at spaces, and at hyphens between letters ("well-known").
_WORDS = re.compile(r"\s+|(?<=[A-Za-z])-(?=[A-Za-z])")
_EDGES = '"\u201c\u201d\u2018()[]{}*'  # quotes and brackets around a word, not spoken
G2P_ENV = "KOKORO_EN_G2P"  # "lexicon" (the default) or "espeak": see the module docstring

# misaki/espeak.py EspeakFallback.E2M (US English), longest first.
_E2M = sorted(
    {
        "ʔˌn\u0329": "ʔn",
        "ʔn\u0329": "ʔn",
        "a^ɪ": "I",
        "a^ʊ": "W",
        "d^ʒ": "ʤ",
        "e^ɪ": "A",
        "e": "A",
        "t^ʃ": "ʧ",
        "ɔ^ɪ": "Y",
        "ə^l": "ᵊl",
        "ʲo": "jo",
        "ʲə": "jə",
        "ʲ": "",
        "ɚ": "əɹ",
        "r": "ɹ",
        "x": "k",
        "ç": "k",
        "ɐ": "ə",
        "ɬ": "l",
        "\u0303": "",
    }.items(),
    key=lambda kv: -len(kv[0]),
)


def split_runs(text: str) -> tuple[list[tuple[str, str]], str]:
    """[(lang, text)] with lang "zh" or "en", and the characters of other scripts dropped."""
    foreign = "".join(_FOREIGN.findall(text))
    text = _FOREIGN.sub(" ", text)
    runs: list[tuple[str, str]] = []
    pending = ""  # neutral characters before the first run
    for han, latin, other in _RUN.findall(text):
        lang = "zh" if han else "en" if latin else None
        if lang is None:
            if runs:
                runs[-1] = (runs[-1][0], runs[-1][1] + other)
            else:
                pending += other
        elif runs and runs[-1][0] == lang:
            runs[-1] = (lang, runs[-1][1] + han + latin)
        else:
            runs.append((lang, pending + han + latin))
            pending = ""
    if pending.strip() and any(c.isdigit() for c in pending):
        runs.append(("en", pending))  # only digits and marks: read them in English
    return runs, foreign


class Phonemizer:
    """Phonemes for runs of text; loads jieba's dictionary on first Mandarin run."""

    def __init__(self, espeak: str = "espeak-ng", english: str | None = None) -> None:
        """`english`: "lexicon" or "espeak" (None: the G2P_ENV variable, else "lexicon")."""
        self._espeak = espeak
        self._zh: Any = None
        self._english = english or os.environ.get(G2P_ENV) or "lexicon"
        if self._english not in ("lexicon", "espeak"):
            raise ValueError(f"{G2P_ENV} must be lexicon or espeak, not {self._english!r}")
        self._lexicon: Lexicon | None = None

    def __call__(self, lang: str, text: str) -> str:
        return self.mandarin(text) if lang == "zh" else self.english(text)

    def mandarin(self, text: str) -> str:
        if self._zh is None:
            import jieba
            from misaki.zh import ZHG2P

            jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO
            self._zh = ZHG2P()
        phonemes, _ = self._zh(text)
        return str(phonemes)

    def english(self, text: str) -> str:
        out: list[str] = []
        for match in _CLAUSE.finditer(text):
            words, marks = match[1] or match[3] or "", match[2] or ""
            if words.strip():
                out.append(self._words(words))
            if marks:
                out.append(marks[0] + " ")
        return " ".join("".join(out).split())

    def _words(self, words: str) -> str:
        """Phonemes of a clause: known words from the lexicon, runs of others from espeak-ng."""
        if self._english == "espeak":
            return self._espeak_ipa(words)
        if self._lexicon is None:
            self._lexicon = Lexicon()
        tokens = [t.strip(_EDGES) for t in _WORDS.split(words)]
        tokens = [t for t in tokens if t]
        phonemes: list[str | None] = [self._lexicon.word(t) for t in tokens]
        i = 0
        while i < len(tokens):  # each run of unknown words: one espeak-ng call, in context
            if phonemes[i] is not None:
                i += 1
                continue
            j = i
            while j < len(tokens) and phonemes[j] is None:
                j += 1
            phonemes[i:j] = [self._espeak_ipa(" ".join(tokens[i:j])), *[""] * (j - i - 1)]
            i = j
        next_vowel: bool | None = None  # words before a vowel sound: "the apple", "to it"
        for k in range(len(tokens) - 1, -1, -1):
            ps = self._lexicon.word(tokens[k], next_vowel) or phonemes[k] or ""
            phonemes[k] = ps
            if ps:
                next_vowel = starts_with_vowel(ps)
        return " ".join(p for p in phonemes if p)

    def _espeak_ipa(self, words: str) -> str:
        done = subprocess.run(
            [self._espeak, "-q", "-b1", "--ipa", "--tie=^", "-v", "en-us", "--", words],
            capture_output=True,
            timeout=_ESPEAK_TIMEOUT_S,
            check=True,
        )
        return to_kokoro(" ".join(done.stdout.decode(errors="replace").split()))


def to_kokoro(ipa: str) -> str:
    """espeak-ng's US English IPA (tie "^") in Kokoro's symbols (misaki's EspeakFallback)."""
    for old, new in _E2M:
        ipa = ipa.replace(old, new)
    ipa = re.sub(r"(\S)\u0329", r"ᵊ\1", ipa).replace("\u0329", "")
    ipa = ipa.replace("o^ʊ", "O").replace("ɜːɹ", "ɜɹ").replace("ɜː", "ɜɹ")
    ipa = ipa.replace("ɪə", "iə").replace("ː", "").replace("o", "ɔ")
    ipa = ipa.replace("ɾ", "T").replace("ʔ", "t")
    return ipa.replace("^", "")
