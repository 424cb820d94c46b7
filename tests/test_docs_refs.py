"""References between the repository's files resolve inside the repository.

- No tracked file points outside the repository to private notes (a `shared` directory
  beside the checkout) or cites a document the repository does not hold.
- Every citation of the wire reference, `docs/protocol.md §X.Y` (or `§X`, or a Markdown link
  to protocol.md followed by §…), names a section heading of docs/protocol.md.
- The wire reference is cited by its path, docs/protocol.md, never by another name.
- docs/protocol.md keeps the section numbers the code has always cited.
- Every relative Markdown link points to a file that exists.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
# Built from pieces, so this file does not match what it forbids.
_SHARED = "shared/"
FORBIDDEN = ("../" + "shared", _SHARED + "PROTOCOL", _SHARED + "ARCHITECTURE", _SHARED + "STYLE")
OLD_NAME = "PROTOCOL" + ".md"
SECTIONS = (
    ["1", *(f"1.{i}" for i in range(9))]
    + ["2", *(f"2.{i}" for i in range(1, 8))]
    + ["3", "3.1", "3.2", "3.3", "4"]
)
_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.M)
_REF = r"§\s?\d+(?:\.\d+)?"
_CITE = re.compile(
    r"(?:docs/protocol\.md`?(?:\]\([^)\s]*\))?|\]\((?:\.\./)*(?:docs/)?protocol\.md\))"
    rf"\s*({_REF}(?:\s*(?:,|and|–|-|/)\s*{_REF})*)"
)
_CAPS_DOC = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_-]*\.md)\b")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache
def tracked_texts() -> dict[str, str]:
    """Every tracked file that is text (UTF-8, no NUL byte), by its path in the repository."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = {}
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def where(text: str, index: int) -> int:
    """The line number of `index` in `text`."""
    return text.count("\n", 0, index) + 1


def protocol_sections() -> list[str]:
    """Section numbers of docs/protocol.md, in order."""
    return _HEADING.findall(PROTOCOL.read_text(encoding="utf-8"))


def test_no_file_points_outside_the_repository() -> None:
    found = [
        f"{name}:{where(text, text.index(bad))}: {bad}"
        for name, text in tracked_texts().items()
        for bad in FORBIDDEN
        if bad in text
    ]
    assert not found, "\n".join(found)


def test_cited_documents_are_in_the_repository() -> None:
    present = {Path(name).name for name in tracked_texts()} | {OLD_NAME}  # see the next test
    found = [
        f"{name}:{where(text, m.start())}: {m[1]}"
        for name, text in tracked_texts().items()
        for m in _CAPS_DOC.finditer(text)
        if m[1] not in present
    ]
    assert not found, "documents cited but not in the repository:\n" + "\n".join(found)


def test_the_wire_reference_is_cited_as_docs_protocol_md() -> None:
    found = [
        f"{name}:{where(text, m.start())}"
        for name, text in tracked_texts().items()
        for m in re.finditer(re.escape(OLD_NAME), text)
    ]
    assert not found, f"cite docs/protocol.md, not {OLD_NAME}:\n" + "\n".join(found)


def test_protocol_md_keeps_its_section_numbers() -> None:
    assert protocol_sections() == SECTIONS


def test_every_protocol_citation_names_a_section() -> None:
    sections = set(protocol_sections())
    cited = 0
    bad = []
    for name, text in tracked_texts().items():
        for m in _CITE.finditer(text):
            for ref in re.findall(r"§\s?(\d+(?:\.\d+)?)", m[1]):
                cited += 1
                if ref not in sections:
                    bad.append(f"{name}:{where(text, m.start())}: §{ref}")
    assert not bad, "no such section in docs/protocol.md:\n" + "\n".join(bad)
    assert cited > 10  # the pattern still finds the citations


def test_citation_pattern() -> None:
    def refs(text: str) -> list[str]:
        return [r for m in _CITE.finditer(text) for r in re.findall(r"§\s?(\d+(?:\.\d+)?)", m[1])]

    assert refs("(docs/protocol.md §1.2, §1.3, §1.5)") == ["1.2", "1.3", "1.5"]
    assert refs("docs/protocol.md §1.2–§1.6 and docs/protocol.md §2.") == ["1.2", "1.6", "2"]
    assert refs("`docs/protocol.md` §2; the API") == ["2"]
    assert refs("[docs/protocol.md](protocol.md) §1 (device)") == ["1"]
    assert refs("see [the reference](../docs/protocol.md) §3.3") == ["3.3"]
    assert refs("docs/protocol.md, section 1") == []


def test_relative_markdown_links_resolve() -> None:
    broken = []
    for name, text in tracked_texts().items():
        if not name.endswith(".md"):
            continue
        for m in _LINK.finditer(text):
            target = m[1].split("#", 1)[0]
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # an anchor in the same file, or a URL
            if not (ROOT / name).parent.joinpath(target).exists():
                broken.append(f"{name}:{where(text, m.start())}: {m[1]}")
    assert not broken, "\n".join(broken)
