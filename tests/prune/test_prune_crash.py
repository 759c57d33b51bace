"""kill -9 at random instants of a prune (beside a writer): the store always verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store import Store, gc, verify
from tests.unit.store_util import IDENTITY

REPO = Path(__file__).resolve().parents[2]


def _check(path: str, pinned: list[str]) -> int:
    store = Store.open(path, IDENTITY)
    try:
        report = verify(store, read_data=True)
        assert report.ok, (report.summary(), report.problems, report.damaged[:3])
        names = [r.name for r in store.list_snapshots()]
        assert set(pinned) <= set(names) and set(pinned) <= set(gc.pins(store))
        reader = SnapshotReader(store)
        for name in names:  # every remaining snapshot reads back in full
            record = reader.snapshot(name)
            for _, entry in reader.walk(record.root_tree_id):
                if entry.type == 1:
                    assert len(reader.read_file(entry)) == entry.size
        return len(report.garbage)
    finally:
        store.close()


def test_sigkill_during_prune(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    rng = random.Random(99)
    pinned: list[str] = []
    garbage_seen = 0
    deadline = time.monotonic() + 40
    for iteration in range(20):
        if time.monotonic() > deadline:
            break
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.prune.prune_crash_helper", path, str(iteration)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        line = proc.stdout.readline().split()
        assert line[0] == "pinned"
        pinned.append(line[1])
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        garbage_seen += _check(path, pinned)
    assert len(pinned) >= 5
    # whatever crashes left (garbage packs) a collection removes
    store = Store.open(path, IDENTITY)
    gc.collect(store)
    report = verify(store, read_data=True)
    assert report.ok and not report.garbage, report.summary()
    store.close()
