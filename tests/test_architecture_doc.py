"""docs/architecture.md names real code, so it cannot silently rot when code moves.

- Every hop of the two hop lists (sections 2 and 3) names `path/to/module.py:Qual.name`: the
  file exists and the function or method is defined there (nested definitions included,
  e.g. a closure `Class.method.inner`). Found by reading the source, so no heavy module
  (onnxruntime, pocketsphinx) is imported.
- The hops are numbered 1, 2, 3, … and the "Count: N hops, M modules." line under each list
  agrees with the list.
- Anywhere in the page, a code-formatted `path/to/file.ext` names a file of the repository;
  with `:123` (or a `:123` alone after it) the file has that many lines; a module's `:Name`
  is defined in it.
- The Mermaid pictures: the package picture's solid arrows are exactly the imports between
  the packages (every one drawn, none invented); in the turn's sequence picture every arrow
  into a module (a participant named by its path) starts with a function of that module;
  every file a picture names exists.
"""

from __future__ import annotations

import ast
import re
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"

_HOP = re.compile(r"^\| (\d+) \| `([^`]+)` \|", re.M)
_COUNT = re.compile(r"^Count: (\d+) hops, (\d+) modules\.$", re.M)
_PATH = r"[a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)+\.py"
_FILE = r"[a-z_][a-z0-9_.-]*(?:/[a-z0-9_.-]+)+\.[a-z]+"
_NAMED = re.compile(rf"({_FILE})(?::([A-Za-z_][\w.]*|\d+))?")
_LINE_ONLY = re.compile(r":(\d+)")
_CODE = re.compile(r"`([^`\n]+)`")
_SECTIONS = {"spoken turn": ("## 2.", "## 3."), "pass-through": ("## 3.", "## 4.")}
_MERMAID = re.compile(r"^```mermaid\n(.*?)^```", re.M | re.S)
_IMPORT_ARROW = re.compile(r"^ *(\w+) --> (\w+) *$", re.M)
_PARTICIPANT = re.compile(r"^ *participant (\w+) as (.+?) *$", re.M)
_MESSAGE = re.compile(r"^ *(\w+) *-{1,2}(?:>>|>|x|\))[+-]? *(\w+) *: *(.*)$", re.M)
_LEADING_NAME = re.compile(r"[A-Za-z_][\w.]*")


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section(title: str) -> str:
    start, end = _SECTIONS[title]
    text = doc()
    return text[text.index("\n" + start) : text.index("\n" + end)]


def hops(title: str) -> list[tuple[int, str]]:
    """(number, `module:function`) of every row of a hop list."""
    return [(int(n), name) for n, name in _HOP.findall(section(title))]


@cache
def definitions(path: str) -> frozenset[str]:
    """Qualified names of every class and function defined in `path`, nested ones too."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + node.name
                found.add(name)
                walk(node.body, name + ".")
            elif isinstance(node, ast.If | ast.Try):  # definitions under if/try blocks
                walk(node.body, prefix)
                walk(node.orelse, prefix)

    walk(tree.body, "")
    return frozenset(found)


def problem(path: str, name: str) -> str | None:
    """What is wrong with `path:name`, or None when it names real code."""
    if not (ROOT / path).is_file():
        return f"{path}: no such file"
    if name.isdigit():
        lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
        return None if 0 < int(name) <= lines else f"{path}:{name}: the file has {lines} lines"
    if not path.endswith(".py"):
        return f"{path}:{name}: only a line number can follow a file that is not Python"
    return None if name in definitions(path) else f"{path}: defines no {name}"


@pytest.mark.parametrize("title", list(_SECTIONS))
def test_every_hop_names_a_function_that_exists(title: str) -> None:
    listed = hops(title)
    assert len(listed) > 10, "the hop list was not found"
    bad = []
    for n, name in listed:
        path, sep, qualname = name.partition(":")
        if not sep or not re.fullmatch(_PATH, path) or not qualname:
            bad.append(f"hop {n}: `{name}` is not path/to/module.py:function")
        elif (why := problem(path, qualname)) is not None:
            bad.append(f"hop {n}: {why}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("title", list(_SECTIONS))
def test_hops_are_numbered_and_counted(title: str) -> None:
    listed = hops(title)
    assert [n for n, _ in listed] == list(range(1, len(listed) + 1))
    counts = _COUNT.findall(section(title))
    assert len(counts) == 1, "one 'Count: N hops, M modules.' line per hop list"
    modules = {name.partition(":")[0] for _, name in listed}
    assert (int(counts[0][0]), int(counts[0][1])) == (len(listed), len(modules))


def test_every_code_path_in_the_page_exists() -> None:
    bad = []
    checked = 0
    current: str | None = None  # the last file named: a bare `:123` refers to it
    for code in _CODE.findall(doc()):
        if m := _NAMED.fullmatch(code):
            current, name = m[1], m[2]
        elif (m := _LINE_ONLY.fullmatch(code)) and current is not None:
            name = m[1]
        else:
            continue
        checked += 1
        why = problem(current, name) if name else None
        if name is None and not (ROOT / current).is_file():
            why = f"{current}: no such file"
        if why is not None:
            bad.append(why)
    assert not bad, "\n".join(bad)
    assert checked > 100  # the patterns still find the references


def test_the_checker_reads_names_as_meant() -> None:
    assert problem("relay/device/link.py", "Link._hold.fire") is None
    assert problem("relay/device/link.py", "Link.no_such_method") is not None
    assert problem("relay/device/no_such_module.py", "x") is not None
    assert problem("relay/device/link.py", "1") is None
    assert problem("relay/device/link.py", "100000") is not None
    assert problem("docs/protocol.md", "1") is None
    assert _NAMED.fullmatch("asr_tts/asr/worker.py:_begin")
    assert _NAMED.fullmatch("docs/performance.md:127")
    assert not _NAMED.fullmatch("docs/protocol.md §1.6")


def pictures(kind: str) -> list[str]:
    """The bodies of the page's Mermaid blocks of `kind` (flowchart, sequenceDiagram)."""
    return [body for body in _MERMAID.findall(doc()) if body.startswith(kind)]


def packages() -> list[str]:
    """Our top-level packages, as import-linter knows them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    roots: list[str] = config["tool"]["importlinter"]["root_packages"]
    return roots


def imports_between_packages() -> set[tuple[str, str]]:
    """(importer, imported) for every package importing another, at any depth of its modules
    (imports inside functions and under TYPE_CHECKING included, as import-linter counts them)."""
    ours = set(packages())
    found: set[tuple[str, str]] = set()
    for package in ours:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                else:
                    continue
                found |= {(package, root) for n in names if (root := n.split(".")[0]) in ours}
    return {(a, b) for a, b in found if a != b}


def test_the_package_picture_draws_every_import_and_no_other() -> None:
    [layout] = pictures("flowchart")
    drawn = set(_IMPORT_ARROW.findall(layout))
    actual = imports_between_packages()
    assert len(actual) > 10  # the scan still finds the imports
    assert drawn - actual == set(), "drawn, but no such import"
    assert actual - drawn == set(), "imported, but not drawn"


def test_each_arrow_into_a_module_names_one_of_its_functions() -> None:
    [turn] = pictures("sequenceDiagram")
    modules = {
        ident: name for ident, name in _PARTICIPANT.findall(turn) if re.fullmatch(_PATH, name)
    }
    assert len(modules) > 5, "the participants were not found"
    bad = [why for path in modules.values() if (why := problem(path, "1")) is not None]
    checked = 0
    for _source, target, text in _MESSAGE.findall(turn):
        if target not in modules:
            continue  # the device, the business service: no code of ours
        checked += 1
        name = _LEADING_NAME.match(text)
        if name is None:
            bad.append(f"arrow into {modules[target]}: {text!r} starts with no function name")
        elif (why := problem(modules[target], name[0])) is not None:
            bad.append(f"arrow {text!r}: {why}")
    assert not bad, "\n".join(bad)
    assert checked > 15  # the pattern still finds the arrows


def test_every_file_a_picture_names_exists() -> None:
    named = [m[1] for body in _MERMAID.findall(doc()) for m in _NAMED.finditer(body)]
    assert len(named) > 5
    assert [path for path in named if not (ROOT / path).is_file()] == []
