"""Answer text to speakable sentences, markdown and emoji removed (docs/protocol.md §1.5)."""

from __future__ import annotations

import re

_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_FENCE = re.compile(r"^[ \t]*(```|~~~).*$", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_=])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_LINE_PREFIX = re.compile(
    r"^[ \t]*(?:>[ \t]*)*(?:#{1,6}[ \t]+|[-*+•][ \t]+|\d{1,3}[.)][ \t]+)?", re.MULTILINE
)
# Emphasis marks: backticks and ~~ always; a * run unless it stands between spaces or digits
# (2 * 3, 2*3 are arithmetic); an _ run unless inside a word (snake_case, CommonMark's rule).
_MARKS = re.compile(r"`+|~~|(?<![\s\d])\*+|\*+(?![\s\d])|(?<!\w)_+|_+(?!\w)")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong .. symbols and pictographs extended-A, incl. flags, tones
    "\u2300-\u23ff"  # misc technical (⌚ ⏰ ⏩)
    "\u25a0-\u25ff"  # geometric shapes (▶ ◀ ■ ●), never worth pronouncing
    "\u2600-\u27bf"  # misc symbols, dingbats (☀ ✅ ❤)
    "\u2b00-\u2bff"  # arrows and stars (⭐ ⬆)
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
# Text-default symbols that an emoji presentation selector (U+FE0F) turns into emoji: arrows
# (↩️ ↔️ ⤴️), ‼️ ⁉️ ℹ️ Ⓜ️ ©️ ®️ ™️ 〰️ 〽️ ㊗️ ㊙️. Without the selector they stay (A → B).
_EMOJI_PRESENTED = re.compile(
    "[\u00a9\u00ae\u203c\u2049\u2122\u2139\u2190-\u21ff\u24c2\u2934\u2935"
    "\u3030\u303d\u3297\u3299]\ufe0f"
)
_SPACES = re.compile(r"[ \t\f\v\u3000]+")
# A space before punctuation is what an emoji leaves behind ("Great job 👍." -> "Great job .").
_SPACE_BEFORE_MARK = re.compile(r" +(?=[，。！？；：、…]|[,.!?;:](?:\s|$))")

# A sentence ends after a run of Chinese/Western end marks, or at a line break. A Western
# period only ends a sentence before a space, the end, or more punctuation, so that 3.14,
# example.com and v1.2 stay whole. Closing quotes and brackets belong to the sentence.
_END = re.compile(
    r"(?:[。！？!?；;…]|\.(?=$|[\s.!?;\"')\]]|[^\x00-\x7f]))+[\"')\]”’」』）】》]*|\n"
)
# Where an over-long sentence may be cut; ASCII , and : not between digits (1,000 and 12:30).
_COMMA = re.compile(r"[，、：]|[,:](?!\d)")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
# The early cut of the first segment leaves at least this many characters before the mark, so
# that "Well," or "好的，" is not spoken alone.
FIRST_MIN_CHARS = 6
# A first segment with no comma early enough is cut at a word when it is longer than this many
# times first_max_chars (spoken length): 48 by default, ~3 s of speech, 16 Han characters.
FIRST_WORDS_FACTOR = 2


def clean_for_speech(text: str) -> str:
    """Strip markdown marks (emphasis, code, headings, list markers, links) and emoji."""
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _FENCE.sub("", text)
    text = _RULE.sub("", text)
    text = _LINE_PREFIX.sub("", text)
    text = _MARKS.sub("", text)
    text = _EMOJI_PRESENTED.sub("", text)
    text = _EMOJI.sub("", text)
    lines = (
        _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", line)).strip() for line in text.splitlines()
    )
    return "\n".join(line for line in lines if line)


def _speakable(text: str) -> bool:
    # str.isalnum covers Latin letters, digits of any script and CJK ideographs alike.
    return any(ch.isalnum() for ch in text)


def _merge_fragments(pieces: list[str]) -> list[str]:
    """Attach pieces with nothing to pronounce to the piece before (or after) them."""
    out: list[str] = []
    carry = ""
    for piece in pieces:
        if not _speakable(piece):
            if out:
                out[-1] += piece
            else:
                carry += piece
            continue
        out.append(carry + piece)
        carry = ""
    return out


def _hard_cut(text: str, max_chars: int) -> list[str]:
    """Cut at max_chars, preferring the last space in the second half of the window."""
    out: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    out.append(text)
    return [piece for piece in out if piece]


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence longer than max_chars at comma-class marks, packing pieces greedily."""
    pieces: list[str] = []
    start = 0
    for m in _COMMA.finditer(sentence):
        pieces.append(sentence[start : m.end()])
        start = m.end()
    pieces.append(sentence[start:])
    out: list[str] = []
    current = ""
    for piece in pieces:
        if len(current) + len(piece) <= max_chars:
            current += piece
            continue
        if current.strip():
            out.append(current.strip())
        if len(piece) > max_chars:
            *whole, current = _hard_cut(piece.strip(), max_chars) or [""]
            out.extend(whole)
        else:
            current = piece
    if current.strip():
        out.append(current.strip())
    return out


def _cut_first(segment: str, first_max_chars: int) -> list[str]:
    """Cut at the first comma-class mark with FIRST_MIN_CHARS before it, if both halves speak;
    then a head still longer than FIRST_WORDS_FACTOR * first_max_chars at a word."""
    parts = [segment]
    for m in _COMMA.finditer(segment):
        if m.start() < FIRST_MIN_CHARS:
            continue
        head, tail = segment[: m.end()].strip(), segment[m.end() :].strip()
        if _speakable(head) and _speakable(tail):
            parts = [head, tail]
        break
    return [*_cut_at_word(parts[0], FIRST_WORDS_FACTOR * first_max_chars), *parts[1:]]


def _cut_at_word(segment: str, limit: int) -> list[str]:
    """`segment` cut at its last word boundary within `limit` (spoken length), if longer.

    A boundary is a space, or the point between two Han characters (Mandarin has no spaces:
    a limit in characters); never next to a digit or before punctuation. A segment with no
    boundary in reach (one long token) stays whole.
    """
    if spoken_length(segment) <= limit:
        return [segment]
    cut, length = 0, 0
    for i, ch in enumerate(segment):
        if length > limit:
            break
        if i and _word_boundary(segment[i - 1], ch):
            cut = i
        length += 3 if _HAN.match(ch) else 1
    head, tail = segment[:cut].strip(), segment[cut:].strip()
    if cut and _speakable(head) and _speakable(tail):
        return [head, tail]
    return [segment]


def _word_boundary(before: str, ch: str) -> bool:
    if ch == " ":
        return True
    return bool(_HAN.match(before) and _HAN.match(ch))


def split_sentences(
    text: str, max_chars: int = 120, first_max_chars: int | None = None
) -> list[str]:
    """Split text into sentences for TTS and subtitles; none is empty, long ones are cut.

    With `first_max_chars`, a first segment longer than that (its `spoken_length`: a Han
    character counts three) is cut early at its first comma (，,、：:), so that the first audio
    is synthesised, and heard, sooner; a first segment still longer than FIRST_WORDS_FACTOR
    times that (no comma, or a late one) is cut at a word: the last space, or between two Han
    characters, within that length.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if first_max_chars is not None and first_max_chars < 1:
        raise ValueError(f"first_max_chars must be at least 1, got {first_max_chars}")
    raw: list[str] = []
    start = 0
    for m in _END.finditer(text):
        raw.append(text[start : m.end()])
        start = m.end()
    raw.append(text[start:])
    # Merging before normalising keeps the text's own spacing between a sentence and its tail.
    sentences = [_SPACES.sub(" ", s.replace("\n", " ")).strip() for s in _merge_fragments(raw)]
    out: list[str] = []
    for sentence in sentences:
        out.extend(_cut_long(sentence, max_chars) if len(sentence) > max_chars else [sentence])
    out = _merge_fragments(out)
    if out and first_max_chars is not None and spoken_length(out[0]) > first_max_chars:
        out[:1] = _cut_first(out[0], first_max_chars)
    return out


def spoken_length(text: str) -> int:
    """The length of `text` in letters of English speech: a Han character is a syllable, about
    as long spoken as three letters, so that "，" cuts a Mandarin first sentence about as early
    (in seconds of speech, which is what a synthesiser's time follows) as an English one."""
    return len(text) + 2 * len(_HAN.findall(text))
