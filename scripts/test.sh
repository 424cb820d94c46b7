#!/usr/bin/env bash
# Sets up, then runs the checks CI runs: lint, format, function size, types, import contracts,
# dead code, protocol/ coverage, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export RELAY_SETUP_BROWSER="${RELAY_SETUP_BROWSER:-1}"  # Chromium for the console test
scripts/setup.sh
# One command a line: under `set -e` a failure before `&&` would not stop the script.
# `ruff check .` alone checks everything; here the function-size rules are a step of their own.
echo "== ruff"
.venv/bin/ruff check --extend-ignore C901,PLR0915 .
.venv/bin/ruff format --check .
echo "== function size"; .venv/bin/ruff check --select C901,PLR0915 .  # limits in pyproject.toml
echo "== mypy"; .venv/bin/mypy
echo "== import contracts"; .venv/bin/lint-imports  # [tool.importlinter] in pyproject.toml
echo "== dead code"; .venv/bin/vulture  # [tool.vulture] in pyproject.toml
echo "== protocol coverage"  # the wire code is pure: every line and branch has a byte-level test
.venv/bin/pytest tests/protocol --cov=protocol --cov-branch --cov-fail-under=100 \
    --cov-report=term-missing:skip-covered
echo "== pytest"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
if [ $# -eq 0 ]; then
    .venv/bin/pytest --ignore=tests/protocol  # those ran above, under coverage
else
    .venv/bin/pytest "$@"
fi
