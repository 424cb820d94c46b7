"""The command line every benchmark shares: its parser, the count check, the run, the output.

    def main(argv: list[str] | None = None) -> int:
        return run_main(run, table, parse_args(argv))

stdout gets one JSON document, stderr the table (progress lines come before it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import orjson
import uvloop

Doc = dict[str, Any]


def parser(benchmark: str, doc: str | None) -> argparse.ArgumentParser:
    """The options parser of `python -m bench.<benchmark>`, its module docstring as help."""
    return argparse.ArgumentParser(prog=f"python -m bench.{benchmark}", description=doc)


def at_least_one(p: argparse.ArgumentParser, *counts: int) -> None:
    """A usage error (exit 2) unless every count is at least 1."""
    if min(counts) < 1:
        p.error("counts must be at least 1")


def goal_lines(goals: Iterable[Mapping[str, Any]]) -> list[str]:
    """One table line per goal: what it asks, the value measured, PASS or FAIL."""
    return [f"goal {g['goal']}: {g['value']} -> {'PASS' if g['pass'] else 'FAIL'}" for g in goals]


def run_main(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, Doc]],
    table: Callable[[Doc], str],
    args: argparse.Namespace,
) -> int:
    """Run the benchmark under uvloop; its document as JSON on stdout, its table on stderr."""
    doc = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(table(doc), file=sys.stderr)
    return 0
