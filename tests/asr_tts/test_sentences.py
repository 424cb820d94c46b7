"""What the device speaks and shows as subtitles: cleaned text, cut into sentences."""

from __future__ import annotations

import pytest

from asr_tts.codec import FrameEncoder
from asr_tts.tts.base import Voice
from asr_tts.tts.sentences import clean_for_speech, split_sentences
from protocol.audio_format import AudioFormat
from tests.asr_tts.test_speaker import FakeTTS, collect, speaker


def test_chinese_splits_after_each_end_mark() -> None:
    text = "你好。我是小智！今天天气怎么样？还不错吧；走吧…好"
    assert split_sentences(text) == [
        "你好。",
        "我是小智！",
        "今天天气怎么样？",
        "还不错吧；",
        "走吧…",
        "好",
    ]


def test_english_splits_but_keeps_decimals_and_domains() -> None:
    text = "Hello there. How are you? I am fine! Pi is 3.14, see example.com... Bye"
    assert split_sentences(text) == [
        "Hello there.",
        "How are you?",
        "I am fine!",
        "Pi is 3.14, see example.com...",
        "Bye",
    ]


def test_mixed_text_and_closing_quotes_stay_with_their_sentence() -> None:
    assert split_sentences("我喜欢Python. 你呢？OK!他说：“好。”然后走了。") == [
        "我喜欢Python.",
        "你呢？",
        "OK!",
        "他说：“好。”",
        "然后走了。",
    ]


def test_newlines_end_sentences_and_spaces_collapse() -> None:
    assert split_sentences("first line\nsecond   line\n\n\tthird") == [
        "first line",
        "second line",
        "third",
    ]


def test_fragments_without_letters_merge_into_a_neighbour() -> None:
    assert split_sentences("嗯……好的。……") == ["嗯……", "好的。……"]
    assert split_sentences("Wait!!! ?? Really?") == ["Wait!!! ??", "Really?"]
    assert split_sentences("...\nHello") == ["... Hello"]
    assert split_sentences("……！") == []


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "。。。", "!?", "- - -"])
def test_nothing_to_say_gives_no_sentences(text: str) -> None:
    assert split_sentences(text) == []


def test_long_chinese_is_cut_at_commas() -> None:
    text = (
        "今天我们要讨论的问题非常复杂，涉及到很多方面，包括经济、政治、文化、社会以及科技等各个领域，"
        "每一个领域都有其独特的特点和规律，我们需要认真分析每一个方面，才能得出正确的结论。"
    )
    parts = split_sentences(text, max_chars=40)
    assert "".join(parts) == text
    assert len(parts) == 3
    assert all(len(p) <= 40 for p in parts)
    assert all(p.endswith(("，", "、", "。")) for p in parts)


def test_long_english_is_cut_at_commas_but_not_inside_numbers() -> None:
    text = "It costs 1,000,000 dollars, starts at 12:30, and then: one, two, three, four, five"
    parts = split_sentences(text, max_chars=30)
    assert parts == [
        "It costs 1,000,000 dollars,",
        "starts at 12:30, and then:",
        "one, two, three, four, five",
    ]


def test_long_text_without_commas_is_cut_hard() -> None:
    words = " ".join(["word"] * 30) + "."
    parts = split_sentences(words, max_chars=50)
    assert all(len(p) <= 50 for p in parts)
    assert " ".join(parts) == words
    assert split_sentences("字" * 250, max_chars=100) == ["字" * 100, "字" * 100, "字" * 50]


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        split_sentences("hi", max_chars=0)


def test_markdown_marks_are_stripped() -> None:
    text = (
        "# Title\n\n"
        "- **bold** item\n"
        "* [a link](http://x.y/z) and ![alt](img.png)\n"
        "12. numbered `code` and _it_ ~~old~~\n"
        "> quoted\n"
        "---\n"
        "```python\nprint(1)\n```"
    )
    assert clean_for_speech(text) == (
        "Title\nbold item\na link and alt\nnumbered code and it old\nquoted\nprint(1)"
    )


def test_markdown_then_split() -> None:
    text = "## 步骤\n1. 打开**设置**。\n2. 点击[这里](https://e.x)！"
    assert split_sentences(clean_for_speech(text)) == ["步骤", "打开设置。", "点击这里！"]


def test_emoji_are_removed_with_their_modifiers() -> None:
    text = "好的😀👍🏽！Great ❤️ job 🇨🇳. Call 1️⃣ 👨‍👩‍👧 ⭐"
    assert clean_for_speech(text) == "好的！Great job. Call 1"


def test_plain_text_is_left_alone() -> None:
    text = "Use .NET 8, version 1.2 costs $5 (about ¥36) — 50% off?"
    assert clean_for_speech(text) == text


def test_more_markdown_is_stripped() -> None:
    text = (
        "###### Deep heading\n"
        "  - nested **item**\n"
        "+ plus item\n"
        "1) first\n"
        "***bold italic*** and __strong__ and [**linked**](https://e.x/a_b)\n"
        "use ``a `tick` here``"
    )
    assert clean_for_speech(text) == (
        "Deep heading\nnested item\nplus item\nfirst\n"
        "bold italic and strong and linked\nuse a tick here"
    )


def test_arithmetic_stars_and_identifiers_survive() -> None:
    text = "2 * 3 = 6, and 2*3 too; call snake_case_name, then **5** * 2"
    assert clean_for_speech(text) == "2 * 3 = 6, and 2*3 too; call snake_case_name, then 5 * 2"


def test_emoji_sequences_and_presentation_selectors_are_removed() -> None:
    text = "Coder 👩🏽‍💻 flag 🏴󠁧󠁢󠁳󠁣󠁴󠁿 keycap #️⃣ heart ❤️‍🔥 arrows ↔️ ⤴️ play ▶️ ©️ ‼️ 〽️ ok"
    assert clean_for_speech(text) == "Coder flag keycap # heart arrows play ok"


def test_text_symbols_without_the_emoji_selector_stay() -> None:
    assert clean_for_speech("A → B © 2024") == "A → B © 2024"


def test_a_long_first_sentence_is_cut_at_its_first_comma() -> None:
    text = "今天天气很好，适合出去走走，我们去公园吧。然后，回家。"
    assert split_sentences(text, first_max_chars=10) == [
        "今天天气很好，",
        "适合出去走走，我们去公园吧。",
        "然后，回家。",  # only the first segment is cut early
    ]
    assert split_sentences(text) == ["今天天气很好，适合出去走走，我们去公园吧。", "然后，回家。"]


def test_the_early_cut_leaves_a_few_characters_before_the_mark() -> None:
    text = "Well, I think the weather is fine today, so let us go out."
    assert split_sentences(text, first_max_chars=24) == [
        "Well, I think the weather is fine today,",
        "so let us go out.",
    ]
    assert split_sentences("好的，今天天气很好，适合出去走走。", first_max_chars=14) == [
        "好的，今天天气很好，",
        "适合出去走走。",
    ]


def test_a_han_character_counts_as_three_letters_for_the_early_cut() -> None:
    # 19 characters, about 4 s of speech: as long as some 57 letters of English.
    text = "厨房的灯已经打开了，祝你今晚过得愉快。"
    assert split_sentences(text, first_max_chars=24) == [text[:10], text[10:]]
    assert split_sentences(text, first_max_chars=60) == [text]  # 19 + 2 * 17 = 53


@pytest.mark.parametrize(
    "text",
    [
        "Short enough, really.",  # not longer than first_max_chars
        "A sentence without a comma goes on.",  # no longer than twice that: kept whole
        "It costs 1,000,000 at 12:30 today.",  # not cut inside numbers
        "A first sentence ending in a comma,",  # nothing would be left to speak
        "今天的天气很好我们一起去公园",  # 14 Han characters: 42, no more than twice 21
        "A-first-segment-that-is-one-long-token-without-any-space-at-all",
    ],
)
def test_the_first_segment_is_kept_when_there_is_no_good_cut(text: str) -> None:
    assert split_sentences(text, first_max_chars=21) == [text]


def test_a_long_first_sentence_without_a_comma_is_cut_at_a_word() -> None:
    # Synthesised whole, such a sentence delayed the first audio by seconds of synthesis.
    words = "we walk along the quiet river and look at the boats " * 8
    parts = split_sentences(words.strip() + ".", first_max_chars=24)
    assert len(parts[0]) <= 48
    assert parts[0] == "we walk along the quiet river and look at the"  # 45, at a space
    assert " ".join(parts).split() == words.split()[:-1] + ["boats."]


def test_a_long_first_mandarin_sentence_is_cut_between_characters() -> None:
    text = "今天的天气很好我们一起去公园散步吧" * 24 + "。"
    parts = split_sentences(text, first_max_chars=24)
    assert parts[0] == text[:16]  # 16 characters: 48 letters of speech
    assert "".join(parts) == text


def test_a_late_comma_leaves_a_head_that_is_cut_again_at_a_word() -> None:
    text = "Please remember that the meeting with the whole design team moves to Friday, not then."
    parts = split_sentences(text, first_max_chars=24)
    assert parts[:2] == [
        "Please remember that the meeting with the whole",
        "design team moves to Friday,",
    ]
    assert " ".join(parts) == text


def test_the_word_cut_is_never_next_to_a_digit() -> None:
    text = "我们在2026年12月4日晚上八点半见面然后一起吃饭好吗"
    parts = split_sentences(text, first_max_chars=6)  # a word cut within 12 letters
    assert parts[0] == "我们"  # not "我们在2" nor "我们在" + "2026年…" (no boundary at a digit)
    assert "".join(parts) == text


def test_the_early_cut_applies_after_the_long_sentence_cut() -> None:
    text = "第一部分的内容，第二部分的内容，第三部分的内容，第四部分的内容。"
    parts = split_sentences(text, max_chars=24, first_max_chars=12)
    # The 24-character cut packs three parts, then the early cut splits the first of them.
    assert parts == ["第一部分的内容，", "第二部分的内容，第三部分的内容，", "第四部分的内容。"]
    assert "".join(parts) == text


def test_first_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="first_max_chars"):
        split_sentences("hi", first_max_chars=0)


async def test_speaker_starts_a_long_first_sentence_at_its_first_comma() -> None:
    first = "今天天气很好，非常适合出去走走，我们一起去附近的公园散步吧。"
    for options, expected in [({}, [first[:7], first[7:]]), ({"first_max_chars": None}, [first])]:
        spk = speaker(FakeTTS(), **options)
        out = await collect(
            spk.sentences(first + "好。", Voice(), FrameEncoder(AudioFormat(sample_rate=24000)))
        )
        assert [s for s, _ in out] == [*expected, "好。"]
