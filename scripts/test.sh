#!/usr/bin/env bash
# Install everything, then run the checks CI runs: ruff, mypy, the import contracts
# (pyproject.toml [tool.importlinter]), and the test suite
# (fastest layer first). Extra arguments go to pytest, e.g. `-m slow` for soak tests.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import contracts"
.venv/bin/lint-imports --no-cache
echo "== pytest"
.venv/bin/python -m pytest "$@"
