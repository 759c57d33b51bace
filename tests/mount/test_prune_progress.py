"""`dpmsfs prune` (offline) shows a bar per phase on a terminal, nothing under --json or
without a terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.mount.conftest import cli_snapshot, run_cli
from tests.mount.test_monitoring import run_on_terminal


def test_prune_progress_on_a_terminal_only(workdir: Path, store_dir: Path) -> None:
    for _day in range(3):
        for i in range(100):
            (workdir / f"log{i:03d}.csv").write_bytes(os.urandom(20_000))
        cli_snapshot(workdir, store_dir)
    code, terminal = run_on_terminal("prune", str(workdir), "--store", str(store_dir),
                                     "--keep-last", "1")  # fmt: skip
    assert code == 0, terminal
    assert "mark" in terminal and "sweep" in terminal, terminal
    quiet = run_cli("prune", str(workdir), "--store", str(store_dir), "--keep-last", "1",
                    "--json")  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert json.loads(quiet.stdout)["removed"] == []
