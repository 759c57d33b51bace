"""scripts/bench_restore.py: the help text, and a small end-to-end run (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_restore.py"


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--snapshots" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
def test_smoke_run(tmp_path: Path) -> None:
    base = Path("/tmp") / f"bench-restore-smoke-{os.getpid()}"
    peers = [] if shutil.which("restic") and shutil.which("borg") else ["--no-peers"]
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--base", str(base), "--size-mb", "15",
             "--snapshots", "10", "--big-mb", "8", "--entries", "100", "--runs", "1",
             "--json", str(tmp_path / "r.json"), *peers],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| full restore --to" in result.stdout
    assert (tmp_path / "r.json").exists()
