"""The Simplified Chinese documents say what their English originals say, in code at least.

For each pair (README.md and README.zh-CN.md, docs/X.md and docs/zh-CN/X.md):

- the commands are the same: every ```sh/bash/console/shell block and every inline `curl …`
  of one is in the other, as often. Comments (`# …` outside quotes) are left out of the
  comparison, so a translation may translate them; the commands themselves may not differ.
- every other code block (JSON, TOML, Python, SSE, byte layouts) is the same too, comments
  aside: the examples other tests check in the English guide are then the Chinese ones.
- a Mermaid picture has the same shape in both: the same participants, arrows, notes and
  blocks (loop, alt, ...) in the same order; only its labels (the text after a participant's
  `as`, an arrow's or a note's `:`, a block's keyword) are translated.
- each links to the other on its first lines (the language switch), and every relative link
  of every file, anchors included, resolves.

When the English changes first, these tests name what the translation lacks; the curl lines of
both integration guides are run by tests/test_docs_curl.py.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAIRS = (
    ("README.md", "README.zh-CN.md"),
    ("docs/integration.md", "docs/zh-CN/integration.md"),
    ("docs/devices.md", "docs/zh-CN/devices.md"),
    ("docs/capacity.md", "docs/zh-CN/capacity.md"),
    ("docs/protocol.md", "docs/zh-CN/protocol.md"),
)
each_pair = pytest.mark.parametrize(("english", "chinese"), PAIRS, ids=[zh for _, zh in PAIRS])
COMMAND_LANGS = frozenset({"sh", "bash", "console", "shell"})
HASH_COMMENT_LANGS = COMMAND_LANGS | {"toml", "python", "py"}
SWITCH_LINES = 5  # the language switch sits under the title
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
_INLINE_CURL = re.compile(r"(?<!`)`(curl [^`]+)`(?!`)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)
# A Mermaid line and the part of it that is the picture's shape, not a label.
_MERMAID_SHAPE = (
    re.compile(r"^((?:participant|actor) \w+) as .*$"),
    re.compile(r"^(\w+ *<{0,2}-{1,2}(?:>>|>|x|\))[+-]? *\w+) *:.*$"),
    re.compile(r"^(Note (?:over|left of|right of) [\w, ]+?) *:.*$"),
    re.compile(r"^(loop|alt|else|opt|par|and|critical|break|rect|box)\b.*$"),
)


@dataclass(frozen=True, slots=True)
class Code:
    """One code block or inline command of a document, as compared across languages."""

    kind: str  # "command" or "example"
    lang: str
    text: str  # comments stripped, blank lines dropped
    line: int


def strip_comments(code: str) -> str:
    """`code` without `# …` comments (a `#` at a line's start or after a space, outside quotes)."""
    lines, quote = [], ""
    for line in code.splitlines():
        kept = []
        for i, ch in enumerate(line):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1].isspace()):
                break
            kept.append(ch)
        lines.append("".join(kept))
    return normalise("\n".join(lines))


def mermaid_shape(code: str) -> str:
    """A Mermaid picture without its labels (and without `%%` comments), one line per
    statement: what a translation must keep."""
    lines = []
    for line in normalise(code).splitlines():
        line = line.strip()
        if line.startswith("%%"):
            continue
        for pattern in _MERMAID_SHAPE:
            if m := pattern.match(line):
                line = m[1]
                break
        lines.append(line)
    return "\n".join(lines)


def normalise(code: str) -> str:
    """`code` with trailing spaces and blank lines dropped."""
    return "\n".join(s for s in (line.rstrip() for line in code.splitlines()) if s)


def dedent(body: str, indent: str) -> str:
    """A fenced block's body without the indentation of its fence (blocks inside list items)."""
    return "\n".join(line.removeprefix(indent) for line in body.splitlines())


@cache
def code_of(name: str) -> tuple[Code, ...]:
    """Every fenced block and every inline `curl …` of the document `name`, in order."""
    text = (ROOT / name).read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        lang, body = m[2].lower(), dedent(m[3], m[1])
        kind = "command" if lang in COMMAND_LANGS else "example"
        if lang == "mermaid":
            code = mermaid_shape(body)
        elif lang in HASH_COMMENT_LANGS:
            code = strip_comments(body)
        else:
            code = normalise(body)
        found.append(Code(kind, lang, code, text.count("\n", 0, m.start()) + 1))
    prose = _FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    for m in _INLINE_CURL.finditer(prose):
        line = prose.count("\n", 0, m.start()) + 1
        found.append(Code("command", "inline", normalise(m[1]), line))
    return tuple(found)


def missing(kind: str, have: str, lacks: str) -> list[str]:
    """The code of kind `kind` in document `have` that document `lacks` does not hold (as often)."""
    theirs = Counter((c.lang, c.text) for c in code_of(lacks) if c.kind == kind)
    out = []
    for c in code_of(have):
        if c.kind != kind:
            continue
        if theirs[(c.lang, c.text)]:
            theirs[(c.lang, c.text)] -= 1
        else:
            out.append(f"{have}:{c.line} ({c.lang}) is not in {lacks}:\n{c.text}")
    return out


def assert_same(kind: str, english: str, chinese: str) -> None:
    """Both documents hold the same code of `kind`, each piece as often."""
    gaps = missing(kind, english, chinese) + missing(kind, chinese, english)
    assert not gaps, "\n\n".join(gaps)


@each_pair
def test_the_commands_are_the_english_ones(english: str, chinese: str) -> None:
    assert any(c.kind == "command" for c in code_of(english)), f"{english}: no command found"
    assert_same("command", english, chinese)


@each_pair
def test_the_other_code_blocks_are_the_english_ones(english: str, chinese: str) -> None:
    assert_same("example", english, chinese)


@each_pair
def test_each_links_to_the_other_at_the_top(english: str, chinese: str) -> None:
    for name, other in ((english, chinese), (chinese, english)):
        head = "\n".join((ROOT / name).read_text(encoding="utf-8").splitlines()[:SWITCH_LINES])
        targets = {resolve(name, m[1]) for m in _LINK.finditer(head)}
        assert ROOT / other in targets, f"{name}: no link to {other} on its first lines"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of the Markdown file `path`'s headings (repeats numbered as GitHub does)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: Counter[str] = Counter()
    out = set()
    for m in _HEADING.finditer(text):
        base = slug(m[1])
        out.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return frozenset(out)


def resolve(name: str, target: str) -> Path:
    """The file a relative link `target` in document `name` points to."""
    path = target.split("#", 1)[0]
    return (ROOT / name).parent.joinpath(path).resolve() if path else ROOT / name


@pytest.mark.parametrize("name", [n for pair in PAIRS for n in pair])
def test_every_link_resolves(name: str) -> None:
    text = _FENCE.sub("", (ROOT / name).read_text(encoding="utf-8"))
    broken = []
    for m in _LINK.finditer(text):
        target = m[1]
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL: not fetched here
        path = resolve(name, target)
        fragment = target.split("#", 1)[1] if "#" in target else ""
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target}: no such heading in {path.relative_to(ROOT)}")
    assert not broken, f"{name}:\n" + "\n".join(broken)


def test_comment_stripping() -> None:
    assert strip_comments("a  # note\nb '#x' \"y # z\"  # c\n# whole line\n") == (
        "a\nb '#x' \"y # z\""
    )
    assert strip_comments('curl -d \'{"a":\n  "#b"}\'  # ok') == 'curl -d \'{"a":\n  "#b"}\''
    assert strip_comments("x#y") == "x#y"


def test_a_mermaid_pictures_shape_is_kept_and_its_labels_are_not() -> None:
    english = """sequenceDiagram
    %% a comment
    participant D as Device
    D->>R: listen start
    R-->>D: stt
    Note over D,R: later
    loop each sentence
        R->>D: frames
    end"""
    chinese = english.replace("%% a comment", "%% 注释").replace("Device", "设备")
    chinese = chinese.replace("listen start", "开始聆听").replace("later", "之后")
    chinese = chinese.replace("each sentence", "每一句").replace("frames", "音频帧")
    shape = "sequenceDiagram\nparticipant D\nD->>R\nR-->>D\nNote over D,R\nloop\nR->>D\nend"
    assert mermaid_shape(english) == mermaid_shape(chinese) == shape
    # Another arrow, another participant or a dropped step is a different picture.
    assert mermaid_shape(english.replace("R-->>D", "R->>D")) != shape
    assert mermaid_shape(english.replace("participant D", "participant E")) != shape
    assert mermaid_shape(english.replace("    R->>D: frames\n", "")) != shape
    # Flowcharts are compared whole: node labels carry code names.
    assert mermaid_shape("flowchart TB\n    a --> b") == "flowchart TB\na --> b"


def test_slugs_are_githubs() -> None:
    assert slug("7. Pacing") == "7-pacing"
    assert slug("6. Binary frames v1, v2, v3") == "6-binary-frames-v1-v2-v3"
    assert slug("1. 把小智固件指向中继") == "1-把小智固件指向中继"
    assert slug("3.1 `X-Agent-ID`：选择业务服务") == "31-x-agent-id选择业务服务"
