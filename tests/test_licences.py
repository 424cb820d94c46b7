"""The project's licence and the licences of what it pulls in at run time.

LICENSE must be the Apache License 2.0, verbatim. docs/licences.md must list every runtime
dependency of pyproject.toml, and every package those pull in, with the licence its installed
metadata declares, so the list cannot drift from the dependencies silently. To print the rows
for the current environment: `python -m tests.test_licences`.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LICENCES = ROOT / "docs" / "licences.md"
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (also Debian's
# /usr/share/common-licenses/Apache-2.0).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
DIRECT = "### Runtime dependencies"  # the two tables checked here, each up to the next heading
TRANSITIVE = "### Pulled in by those"
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]*) \| ([^|]*) \| ([^|]*) \|", re.M)


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, slots=True)
class Declared:
    """A distribution's licence as its metadata states it, and which field states it."""

    name: str
    version: str
    licence: str
    field: str


def declared(dist: metadata.Distribution) -> Declared:
    """License-Expression, else a one-line License, else the licence classifiers."""
    meta = dist.metadata
    name, version = meta["Name"], dist.version
    if "License-Expression" in meta:
        return Declared(name, version, meta["License-Expression"].strip(), "License-Expression")
    text = meta["License"].strip() if "License" in meta else ""
    if text and "\n" not in text and len(text) <= 60:
        return Declared(name, version, text, "License")
    classifiers = [
        c.removeprefix("License :: ").removeprefix("OSI Approved :: ")
        for c in meta.get_all("Classifier") or []
        if c.startswith("License :: ")
    ]
    return Declared(name, version, "; ".join(classifiers) or "not declared", "Classifier")


def runtime_requirements() -> list[Requirement]:
    """`[project] dependencies` of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return [Requirement(r) for r in project["dependencies"]]


def transitive(direct: list[Requirement]) -> list[metadata.Distribution]:
    """The installed distributions the direct requirements pull in, without the direct ones,
    for this platform (markers evaluated, no extras)."""
    direct_names = {normalise(r.name) for r in direct}
    seen: dict[str, metadata.Distribution] = {}
    todo = [r.name for r in direct]
    while todo:
        dist = metadata.distribution(todo.pop())
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = normalise(req.name)
            if key not in seen and key not in direct_names:
                seen[key] = metadata.distribution(req.name)
                todo.append(req.name)
    return [seen[k] for k in sorted(seen)]


def listed(heading: str) -> dict[str, tuple[str, str, str]]:
    """The rows of the docs/licences.md table under `heading`: package -> (version, licence,
    field)."""
    text = LICENCES.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}")
    end = text.find("\n#", start + 1)
    return {
        normalise(m[1]): (m[2].strip(), m[3].strip(), m[4].strip())
        for m in _ROW.finditer(text[start : end if end >= 0 else len(text)])
    }


def row(d: Declared, note: str = "") -> str:
    """The docs/licences.md row for a distribution."""
    return f"| `{d.name}` | {d.version} | {d.licence} | {d.field} | {note} |"


def test_license_file_is_the_apache_2_text() -> None:
    data = (ROOT / "LICENSE").read_bytes()
    assert data.startswith(b"\n                                 Apache License\n")
    assert b"Version 2.0, January 2004" in data
    assert hashlib.sha256(data).hexdigest() == APACHE_2_SHA256, "LICENSE is not verbatim"


def test_pyproject_declares_apache_2() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert tomllib.load(f)["project"]["license"] == "Apache-2.0"


@pytest.mark.parametrize("req", runtime_requirements(), ids=lambda r: r.name)
def test_every_runtime_dependency_is_listed_with_its_pin_and_licence(req: Requirement) -> None:
    rows = listed(DIRECT)
    assert normalise(req.name) in rows, f"{req.name} is missing from docs/licences.md"
    version, licence, field = rows[normalise(req.name)]
    pins = [s.version for s in req.specifier if s.operator == "=="]
    assert [version] == pins, f"{req.name}: docs/licences.md says {version}, pyproject {pins}"
    d = declared(metadata.distribution(req.name))
    if d.version == version:  # the installed one is the one listed: its metadata decides
        assert (licence, field) == (d.licence, d.field), row(d)


def test_every_transitive_runtime_dependency_is_listed_with_its_licence() -> None:
    rows = listed(TRANSITIVE)
    missing, wrong = [], []
    for dist in transitive(runtime_requirements()):
        d = declared(dist)
        got = rows.get(normalise(d.name))
        if got is None:
            missing.append(row(d))
        elif got[1:] != (d.licence, d.field):
            wrong.append(row(d))
    assert not missing, "add to docs/licences.md:\n" + "\n".join(missing)
    assert not wrong, "licence differs in docs/licences.md:\n" + "\n".join(wrong)


def test_only_runtime_dependencies_are_listed_as_such() -> None:
    # A dependency dropped from pyproject must leave the table too. (The transitive table
    # may hold packages pulled in on other Python versions only, e.g. typing_extensions.)
    assert set(listed(DIRECT)) == {normalise(r.name) for r in runtime_requirements()}


if __name__ == "__main__":
    reqs = runtime_requirements()
    for r in reqs:
        print(row(declared(metadata.distribution(r.name))))
    print()
    for dist in transitive(reqs):
        print(row(declared(dist)))
