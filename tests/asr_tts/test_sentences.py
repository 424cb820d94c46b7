"""What the device speaks and shows as subtitles: cleaned text, cut into sentences."""

from __future__ import annotations

import pytest

from asr_tts.sentences import clean_for_speech, split_sentences


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
