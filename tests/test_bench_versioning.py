"""scripts/bench_versioning.py: its options parse, and a tiny configuration runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_versioning.py"


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--million" in result.stdout and "--workdir-base" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
def test_tiny_configuration_runs() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-versioning-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    out = base / "figures.json"
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--size-mb", "50", "--runs", "1",
             "--workdir-base", str(base), "--json", str(out)],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        figures = json.loads(out.read_text())["median"]
        for tool in ("dpmsfs", "restic", "borg"):
            assert figures[tool]["import_s"] > 0
            assert figures[tool]["stored_bytes"] > 0
            assert "incremental_s" in figures[tool]
        assert figures["dpmsfs"]["latency_idle_create_us"] > 0
        assert not [d for d in base.iterdir() if d.name.startswith("run")], "run dir left"
    finally:
        shutil.rmtree(base, ignore_errors=True)
