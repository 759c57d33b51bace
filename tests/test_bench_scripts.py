"""The benchmark scripts stay runnable: a fast --help check, and a slow --quick run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_MOUNT = REPO / "scripts" / "bench_mount.py"


def test_bench_mount_help() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH_MOUNT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout
    assert "--only" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
@pytest.mark.timeout(900)
def test_bench_mount_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCH_MOUNT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    measured = {(row["workload"], row["baseline"]) for row in report["rows"]}
    assert ("warm_seq_read", "native") in measured
    assert ("create", "example") in measured
    assert ("tar_x", "example") in measured
    with open("/proc/self/mountinfo") as mounts:
        assert "dpmsfs-bench-" not in mounts.read(), "a benchmark mount was left behind"


BENCH_PRUNE = REPO / "scripts" / "bench_prune.py"


def test_bench_prune_help() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH_PRUNE), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--keep-last" in result.stdout


BENCH_WORKLOADS = REPO / "scripts" / "bench_workloads.py"


def test_bench_fuse_requests_help() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_fuse_requests.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--calls" in result.stdout and "--rounds" in result.stdout


def test_bench_workloads_help() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH_WORKLOADS), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--sides" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
@pytest.mark.timeout(900)
def test_bench_prune_smoke(tmp_path: Path) -> None:
    out = tmp_path / "prune.json"
    result = subprocess.run(
        [sys.executable, str(BENCH_PRUNE), "--size-mb", "20", "--days", "3", "--per-day", "2",
         "--keep-last", "2", "--samples", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=850,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["verify_ok"] and report["snapshots_removed"] > 0
    assert report["reclaimed_bytes"] > 0


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"
)
@pytest.mark.timeout(1200)
def test_bench_workloads_quick(tmp_path: Path) -> None:
    out = tmp_path / "workloads.json"
    result = subprocess.run(
        [sys.executable, str(BENCH_WORKLOADS), "--quick", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1150,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["workload"]: row for row in json.loads(out.read_text())["rows"]}
    assert {"datalog", "seq write", "tar x", "rm -rf"} <= rows.keys()
    # The kernel layer counted its requests: with passthrough no WRITE reaches it.
    datalog = rows["datalog"]
    assert datalog["kernel_requests"].get("WRITE", 0) >= 5_000
    assert datalog["kernel-pt_requests"].get("WRITE", 0) == 0
    transports = json.loads(out.read_text())["transports"]
    assert transports["kernel-pt"].startswith("/dev/fuse")
    if os.path.exists("/sys/module/fuse/parameters/enable_uring"):
        assert transports["kernel-pt-uring"].startswith("io_uring"), transports
