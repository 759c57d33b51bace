"""Crash consistency: kill -9 at random instants, and a full disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpmsfs.store import Store, StoreFullError, verify
from tests.unit.store_util import IDENTITY, new_store

REPO = Path(__file__).resolve().parents[2]


def _check(path: str, flushed: list[bytes]) -> None:
    store = Store.open(path, IDENTITY)
    report = verify(store, read_data=True)
    assert report.ok, (report.summary(), report.problems, report.damaged)
    for oid in flushed:
        assert store.read_object(oid) is not None  # read_object checks the hash
    store.close()


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    rng = random.Random(1234)
    flushed: list[bytes] = []
    deadline = time.monotonic() + 25
    for iteration in range(20):
        if time.monotonic() > deadline:
            break  # keep the test fast on a slow machine; 20 kills is the normal case
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.store_crash_helper", path, str(iteration)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.splitlines()
        # The last line may be cut short by the kill: only complete lines count.
        complete = lines if out.endswith("\n") else lines[:-1]
        for line in complete:
            flushed.extend(bytes.fromhex(h) for h in line.split())
        _check(path, flushed)
    assert flushed, "the writer never got to flush: the kill window is too short"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here")
    try:
        store = new_store(str(mnt / "store"), pack_size=128 << 10)
        ballast = mnt / "ballast"
        ballast.write_bytes(bytes(512 << 10))
        flushed: list[bytes] = []
        batch: list[bytes] = []
        with pytest.raises(StoreFullError):
            for i in range(1000):
                batch.append(store.write_chunk(os.urandom(16 << 10))[0])
                if i % 8 == 7:
                    store.flush()
                    flushed += batch
                    batch = []
        assert flushed
        report = verify(store, read_data=True)
        assert report.ok, (report.problems, report.damaged)
        ballast.unlink()  # space comes back
        store.flush()  # whatever was pending when the disk filled is written now
        flushed += [oid for oid in batch if store.has_object(oid)]
        oid, _ = store.write_chunk(os.urandom(16 << 10))
        store.flush()
        flushed.append(oid)
        assert verify(store, read_data=True).ok
        for oid in flushed:
            assert store.read_object(oid)
        store.close()
        _check(str(mnt / "store"), flushed)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
