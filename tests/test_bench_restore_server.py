"""scripts/bench_restore_server.py: the help text, and a small end-to-end run (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_restore_server.py"


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--rounds" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
def test_smoke_run(tmp_path: Path) -> None:
    base = Path("/tmp") / f"bench-restore-server-smoke-{os.getpid()}"
    peers = [] if shutil.which("restic") and shutil.which("rclone") else ["--no-peers"]
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--base", str(base), "--size-mb", "20", "--rounds", "1",
             "--json", str(tmp_path / "r.json"), *peers],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["dpmsfs_mb_s"] > 0
