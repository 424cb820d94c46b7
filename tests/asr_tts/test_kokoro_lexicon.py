"""English phonemes for Kokoro from misaki's lexicon, the espeak-ng program for unknown words."""

from __future__ import annotations

import sys

import pytest

from asr_tts.tts.kokoro_g2p import G2P_ENV, Phonemizer
from asr_tts.tts.kokoro_lexicon import Lexicon, apply_stress


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon()


def test_known_words_come_from_the_lexicon_as_kokoro_was_trained(lexicon: Lexicon) -> None:
    assert lexicon.word("kitchen") == "kˈɪʧᵊn"  # espeak-ng's IPA, mapped: kˈɪʧən
    assert lexicon.word("Kitchen") == "kˈɪʧᵊn"  # a capitalised word found in lower case
    assert lexicon.word("hello") == "həlˈO"
    assert lexicon.word("Xiaozhi") is None  # unknown: the caller asks espeak-ng
    assert lexicon.word("7:30") is None


def test_endings_of_known_stems_and_spelled_capitals(lexicon: Lexicon) -> None:
    assert lexicon.word("lights") == "lˈIts"
    assert lexicon.word("dances") == "dˈænsᵻz"
    assert lexicon.word("dancing") == "dˈænsɪŋ"
    assert lexicon.word("what's") == lexicon.word("what’s") == "wˌʌts"  # either apostrophe
    assert lexicon.word("USB") == "jˌuˌɛsbˈi"  # letter by letter, the last one stressed


def test_function_words_follow_the_next_sound(lexicon: Lexicon) -> None:
    assert lexicon.word("the", True) == "ði"
    assert lexicon.word("the", False) == "ðə"
    assert lexicon.word("to", True) == "tʊ"
    assert lexicon.word("a") == "ɐ"
    assert apply_stress("ˈæpᵊl", -1) == "ˌæpᵊl"


def test_a_clause_mixes_the_lexicon_and_espeak_for_what_it_does_not_know() -> None:
    phonemes = Phonemizer(english="lexicon").english("Set a timer for 5 minutes, the apple!")
    assert phonemes == "sˈɛt ɐ tˈIməɹ fɔɹ fˈIv mˈɪnəts, ði ˈæpᵊl!"
    assert "misaki.en" not in sys.modules  # spaCy, num2words: never imported
    assert "spacy" not in sys.modules


def test_espeak_speaks_every_word_when_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "kˈɪʧən" in Phonemizer(english="espeak").english("the kitchen")
    monkeypatch.setenv(G2P_ENV, "espeak")
    assert "kˈɪʧən" in Phonemizer().english("the kitchen")
    monkeypatch.setenv(G2P_ENV, "festival")
    with pytest.raises(ValueError, match=G2P_ENV):
        Phonemizer()
