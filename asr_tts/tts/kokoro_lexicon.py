"""English words to Kokoro phonemes from misaki's US lexicon, without spaCy and without GPL code.

Kokoro v1.0 was trained on phonemes from misaki's English G2P, whose core is two dictionaries
(`misaki/data/us_gold.json`, ~90k words, and `us_silver.json`, ~93k; Apache-2.0, in the misaki
wheel). `misaki.en` itself cannot be used: it imports spaCy (and downloads its model when
asked for phonemes) and num2words (LGPL) at import, and its fallback links espeak-ng's library
into the process. This module reads the two files directly and ports misaki's word lookup
(`misaki/en.py` `Lexicon`, Apache-2.0): case variants, the -s/-ed/-ing endings of known stems,
letters spelled for unknown capitals, stress by capitalisation, and the function words whose
sound depends on the next word (the, to, a, an, am, in). With no tagger, a word whose reading
depends on its part of speech ("read", "live") takes the lexicon's default.

Words the lexicon does not know (numbers, names, anything with a digit or symbol) are left
to the caller (asr_tts.tts.kokoro_g2p speaks them with the espeak-ng program).

The files are kept as their UTF-8 bytes (~6 MB) and searched by bisection over the start of
each entry, not loaded into dicts (which cost ~46 MiB of a worker's memory).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from array import array
from bisect import bisect_left

PRIMARY, SECONDARY = "ˈ", "ˌ"
VOWELS = frozenset("AIOQWYaiuæɑɒɔəɛɜɪʊʌᵻ")
CONSONANTS = frozenset("bdfhjklmnpstvwzðŋɡɹɾʃʒʤʧθ")
_US_TAUS = frozenset("AIOWYiuæɑəɛɪɹʊʌ")
_LETTERS = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*'?")
_ENTRY = re.compile(rb'^  "', re.MULTILINE)


class _Dictionary:
    """One of misaki's lexicon files (sorted keys, one entry a line), searched by bisection."""

    def __init__(self, name: str) -> None:
        self._text = importlib.resources.files("misaki.data").joinpath(name).read_bytes()
        self._starts = array("I", (m.start() for m in _ENTRY.finditer(self._text)))

    def _key(self, i: int) -> bytes:
        start = self._starts[i] + 3
        return self._text[start : self._text.index(b'"', start)]

    def get(self, word: str) -> str | None:
        """The phonemes of `word` as written (case matters), the default of a tagged entry."""
        key = word.encode()
        i = bisect_left(range(len(self._starts)), key, key=self._key)
        if i == len(self._starts) or self._key(i) != key:
            return None
        start = self._starts[i] + 3 + len(key) + 3  # past '"', the key, '": '
        end = self._starts[i + 1] if i + 1 < len(self._starts) else self._text.rindex(b"}")
        value = json.loads(self._text[start:end].rstrip().rstrip(b","))
        if isinstance(value, dict):
            value = value.get("DEFAULT")
        return value if isinstance(value, str) else None


def apply_stress(ps: str, stress: float | None) -> str:
    """misaki's apply_stress: lower, add or raise the stress marks of a word's phonemes."""
    if stress is None:
        return ps
    if stress < -1:
        return ps.replace(PRIMARY, "").replace(SECONDARY, "")
    if stress == -1 or (stress in (0, -0.5) and PRIMARY in ps):
        return ps.replace(SECONDARY, "").replace(PRIMARY, SECONDARY)
    unstressed = PRIMARY not in ps and SECONDARY not in ps
    if stress in (0, 0.5, 1) and unstressed:
        return _restress(SECONDARY + ps) if any(v in ps for v in VOWELS) else ps
    if stress >= 1 and PRIMARY not in ps and SECONDARY in ps:
        return ps.replace(SECONDARY, PRIMARY)
    if stress > 1 and unstressed:
        return _restress(PRIMARY + ps) if any(v in ps for v in VOWELS) else ps
    return ps


def _restress(ps: str) -> str:
    """Move each stress mark to just before the vowel that follows it."""
    marked = [(float(i), p) for i, p in enumerate(ps)]
    for i, (_, p) in enumerate(marked):
        if p in (PRIMARY, SECONDARY):
            vowel = next((j for j, (_, v) in enumerate(marked) if j > i and v in VOWELS), i)
            marked[i] = (vowel - 0.5, p)
    return "".join(p for _, p in sorted(marked))


class Lexicon:
    """misaki's US English lexicon: `word(text, next_vowel)` or None when it does not know."""

    def __init__(self) -> None:
        self._gold = _Dictionary("us_gold.json")
        self._silver = _Dictionary("us_silver.json")

    def word(self, word: str, next_vowel: bool | None = None) -> str | None:
        """Kokoro phonemes of one word of letters (apostrophes allowed), or None.

        `next_vowel`: whether the next word starts with a vowel sound (None: no next word, or
        punctuation next), for "the", "to", "am" and "in".
        """
        word = word.replace("’", "'")
        if not _LETTERS.fullmatch(word):
            return None
        stress = None if word == word.lower() else (2 if word == word.upper() else 0.5)
        ps = self._special(word, next_vowel)
        if ps is None:
            ps = self._word(word, stress)
        return None if ps is None else ps.replace("ɾ", "T").replace("ʔ", "t")

    def _special(self, word: str, next_vowel: bool | None) -> str | None:
        lower = word.lower()
        if lower in ("a", "an"):
            return "ɐ" if lower == "a" else "ɐn"  # as articles, far the commonest use
        if word == "I":
            return SECONDARY + "I"
        if word in ("to", "To"):
            return {None: self._gold.get("to"), False: "tə", True: "tʊ"}[next_vowel]
        if word in ("the", "The"):
            return "ði" if next_vowel else "ðə"
        if word in ("in", "In"):
            return ("" if next_vowel is not None else PRIMARY) + "ɪn"
        if word == "am" and next_vowel is not None:
            return "ɐm"
        return None

    def _word(self, word: str, stress: float | None) -> str | None:
        lower = word.lower()
        if (
            len(word) > 1
            and word != lower
            and not self._in_lexicon(word)
            and (word == word.upper() or word[1:] == word[1:].lower())
            and (self._in_lexicon(lower) or self._stemmed(lower, stress) is not None)
        ):
            word = lower
        if self._is_known(word):
            return self._lookup(word, stress)
        if word.endswith("s'") and self._is_known(word[:-2] + "'s"):
            return self._lookup(word[:-2] + "'s", stress)
        if word.endswith("'") and self._is_known(word[:-1]):
            return self._lookup(word[:-1], stress)
        return self._stemmed(word, stress)

    def _stemmed(self, word: str, stress: float | None) -> str | None:
        for stem_fn in (self._stem_s, self._stem_ed):
            if (ps := stem_fn(word, stress)) is not None:
                return ps
        return self._stem_ing(word, 0.5 if stress is None else stress)

    def _in_lexicon(self, word: str) -> bool:
        return self._get(word, self._gold) is not None or self._get(word, self._silver) is not None

    @staticmethod
    def _get(word: str, table: _Dictionary) -> str | None:
        """misaki's grown dictionary: a lower-case entry also answers for its capitalised
        form, and a capitalised one for its lower-case form (words of 2 letters or more)."""
        ps = table.get(word)
        if ps is None and len(word) > 1:
            if word == word.capitalize() and word != word.lower():
                ps = table.get(word.lower())
            elif word == word.lower():
                ps = table.get(word.capitalize())
        return ps

    def _is_known(self, word: str) -> bool:
        if self._in_lexicon(word):
            return True
        if not word.isascii() or not word.isalpha():
            return False
        if len(word) == 1:
            return True
        if word == word.upper() and self._get(word.lower(), self._gold) is not None:
            return True
        return word[1:] == word[1:].upper()

    def _lookup(self, word: str, stress: float | None) -> str | None:
        if word == word.upper() and self._get(word, self._gold) is None:
            word = word.lower()
        ps = self._get(word, self._gold) or self._get(word, self._silver)
        if ps is None:
            return self._spelled(word)
        return apply_stress(ps, stress)

    def _spelled(self, word: str) -> str | None:
        """Letter by letter (an acronym), the last letter stressed."""
        letters = [self._gold.get(c.upper()) for c in word if c.isalpha()]
        if not letters or any(p is None for p in letters):
            return None
        ps = apply_stress("".join(p for p in letters if p), 0)
        head, mark, tail = ps.rpartition(SECONDARY)
        return f"{head}{PRIMARY}{tail}" if mark else ps

    def _stem_s(self, word: str, stress: float | None) -> str | None:
        if len(word) < 3 or not word.endswith("s"):
            return None
        if not word.endswith("ss") and self._is_known(word[:-1]):
            stem = word[:-1]
        elif (
            word.endswith("'s")
            or (len(word) > 4 and word.endswith("es") and not word.endswith("ies"))
        ) and self._is_known(word[:-2]):
            stem = word[:-2]
        elif len(word) > 4 and word.endswith("ies") and self._is_known(word[:-3] + "y"):
            stem = word[:-3] + "y"
        else:
            return None
        ps = self._lookup(stem, stress)
        if not ps:
            return None
        if ps[-1] in "ptkfθ":
            return ps + "s"
        return ps + ("ᵻz" if ps[-1] in "szʃʒʧʤ" else "z")

    def _stem_ed(self, word: str, stress: float | None) -> str | None:
        if len(word) < 4 or not word.endswith("d"):
            return None
        if not word.endswith("dd") and self._is_known(word[:-1]):
            stem = word[:-1]
        elif (
            len(word) > 4
            and word.endswith("ed")
            and not word.endswith("eed")
            and self._is_known(word[:-2])
        ):
            stem = word[:-2]
        else:
            return None
        ps = self._lookup(stem, stress)
        if not ps:
            return None
        if ps[-1] in "pkfθʃsʧ":
            return ps + "t"
        if ps[-1] == "d":
            return ps + "ᵻd"
        if ps[-1] != "t":
            return ps + "d"
        if len(ps) >= 2 and ps[-2] in _US_TAUS:
            return ps[:-1] + "ɾᵻd"
        return ps + "ᵻd"

    def _stem_ing(self, word: str, stress: float | None) -> str | None:
        if len(word) < 5 or not word.endswith("ing"):
            return None
        if len(word) > 5 and self._is_known(word[:-3]):
            stem = word[:-3]
        elif self._is_known(word[:-3] + "e"):
            stem = word[:-3] + "e"
        elif (
            len(word) > 5
            and re.search(r"([bcdgklmnprstvxz])\1ing$|cking$", word)
            and self._is_known(word[:-4])
        ):
            stem = word[:-4]
        else:
            return None
        ps = self._lookup(stem, stress)
        if not ps:
            return None
        if len(ps) > 1 and ps[-1] == "t" and ps[-2] in _US_TAUS:
            return ps[:-1] + "ɾɪŋ"
        return ps + "ɪŋ"


def starts_with_vowel(ps: str) -> bool | None:
    """misaki's token context: True if the first sound of `ps` is a vowel, False if a
    consonant, None if punctuation comes first (or nothing)."""
    for c in ps:
        if c in VOWELS:
            return True
        if c in CONSONANTS:
            return False
        if c in ";:,.!?—…":
            return None
    return None
