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
# The live mount on our FUSE layer runs with passthrough by default (above); the mount
# suite runs once more without it (READ/WRITE served by the daemon, as on kernels
# before 6.9, e.g. Debian 12's own 6.1). DPMSFS_PASSTHROUGH=0 is read by mount.py.
# The first pass uses the default /dev/fuse transport; this one FUSE over io_uring
# where the kernel has it (fuse_io_uring = auto), so both transports stay covered.
echo "== pytest tests/mount, passthrough off, io_uring transport where the kernel has it"
DPMSFS_PASSTHROUGH=0 DPMSFS_FUSE_IO_URING=auto .venv/bin/python -m pytest tests/mount "$@"
