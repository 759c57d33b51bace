"""A full store never costs the equipment a write: capture pauses, then resumes by itself.

The store lives on an 8 MiB tmpfs, the work directory does not; a program writes more
than fits. Its writes must all succeed with the right contents, `dpmsfs status` must
show capture paused for lack of space, and once the tmpfs grows capture must resume on
its own, drain, and the next snapshot hold the latest contents.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault.conftest import needs_fuse
from tests.fault.util import (
    damage_lines,
    dpmsfs,
    real_tree,
    snapshot_cli,
    snapshot_tree,
    tree_diff,
    verify_cli,
    wait_for_control,
)
from tests.mount.conftest import CliMount

pytestmark = needs_fuse
MiB = 1 << 20


@pytest.fixture
def small_fs(base_dir: Path) -> Iterator[Path]:
    mnt = base_dir / "storefs"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       check=True, capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def status(workdir: Path, store: Path) -> dict[str, Any]:
    result = dpmsfs("status", str(workdir), "--store", str(store), "--json", timeout=30)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_status(workdir: Path, store: Path, ok: Any, what: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report = status(workdir, store)
        if ok(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {report}")
        time.sleep(0.3)


def test_full_store_pauses_capture_and_resumes(
    workdir: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPMSFS_PAUSE_RETRY_SECONDS", "1")
    store = small_fs / "store"
    rng = random.Random(4)
    mount = CliMount(workdir, "--store", str(store))
    try:
        wait_for_control(workdir, store)
        written: dict[str, bytes] = {}
        # 16 MiB of incompressible data into a store that has 8 MiB.
        for i in range(16):
            data = rng.randbytes(MiB + i)
            path = workdir / "results" / f"lot{i:02d}.bin"
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as f:  # every write and the close must succeed
                for start in range(0, len(data), 64 << 10):
                    f.write(data[start : start + (64 << 10)])
            written[f"results/lot{i:02d}.bin"] = data
        (workdir / "results" / "lot00.bin").write_bytes(b"rewritten while full")
        written["results/lot00.bin"] = b"rewritten while full"
        for rel, data in written.items():
            assert (workdir / rel).read_bytes() == data, rel
        paused = wait_status(
            workdir, store, lambda r: r["capture"] == "paused", "capture to pause", 60
        )
        assert "space" in paused["paused_reason"].lower(), paused
        assert paused["daemon"] == "running" and paused["mounted"] is True
        # Writes keep working while paused.
        (workdir / "while-paused.txt").write_bytes(b"still writable")
        assert (workdir / "while-paused.txt").read_bytes() == b"still writable"

        subprocess.run(["mount", "-o", "remount,size=256m", str(small_fs)], check=True)
        wait_status(
            workdir,
            store,
            lambda r: r["capture"] == "running" and r["pending_files"] == 0,
            "capture to resume and drain",
            90,
        )
        (workdir / "results" / "lot01.bin").write_bytes(b"after the space came back")
        name = snapshot_cli(workdir, store, "after full")
        assert status(workdir, store)["capture"] == "running"
    finally:
        mount.stop()
    want, _ = real_tree(workdir)  # unmounted: the real directory itself
    got = snapshot_tree(store, name)
    assert got == want, tree_diff(got, want)
    assert got["results/lot01.bin"][2] == len(b"after the space came back")
    result = verify_cli(workdir, store, "--read-data")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not damage_lines(output), output
