"""scripts/bench_monitoring.py stays runnable: --help fast, a --quick run marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_monitoring.py"


def test_bench_monitoring_help() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0 and "--quick" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs FUSE")
def test_bench_monitoring_quick(tmp_path: Path) -> None:
    out = tmp_path / "mon.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["result"]["ratio"] > 0
    assert all(r["scrapes"] > 0 for r in doc["rows"] if r["monitored"])
