"""Prune in a loop while snapshots are written and read: nothing anyone relies on goes.

The writer reuses content of snapshots the pruner forgets, so its dedup checks hit
objects that are dead at the pruner's mark: exactly the race the guard protocol is for
(docs/design.md "Prune: reclaiming space beside capture"). The reader re-reads pinned
snapshots whose packs get repacked under it.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store import SnapshotRecord, Store, gc, verify
from tests.unit.store_util import T0, new_store, write_tree_from_dict

POOL = [random.Random(i).randbytes(random.Random(i).randint(1_000, 60_000)) for i in range(40)]


def _files(rng: random.Random) -> dict[str, bytes]:
    return {f"d{i % 3}/f{i}": rng.choice(POOL) for i in range(rng.randint(1, 8))}


def _contents(store: Store, name: str) -> dict[str, bytes]:
    reader = SnapshotReader(store)
    record = reader.snapshot(name)
    return {
        p.decode(): reader.read_file(e) for p, e in reader.walk(record.root_tree_id) if e.type == 1
    }


def test_prune_loop_beside_writer_and_reader(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), pack_size=128 << 10)
    expected: dict[str, dict[str, bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    counter = [0]

    def take(rng: random.Random) -> str:
        files = _files(rng)
        with store.references():  # as the engine's snapshot step
            root = write_tree_from_dict(store, files)
            time.sleep(rng.random() * 0.01)  # ids held in memory across a prune's mark
            store.flush()
            with lock:
                counter[0] += 1
                t = T0 + counter[0] * 10**9
            name = store.new_snapshot_name(t)
            store.add_snapshot(SnapshotRecord(name, t, root))
        with lock:
            expected[name] = files
        return name

    rng = random.Random(5)
    pinned = [take(rng) for _ in range(3)]
    for name in pinned:
        gc.pin(store, name)

    def writer() -> None:
        wrng = random.Random(6)
        try:
            while not stop.is_set():
                take(wrng)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for name in pinned:
                    assert _contents(store, name) == expected[name]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    rounds = reclaimed = repacked = 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline and not errors:
            names = [r.name for r in store.list_snapshots()]
            gc.forget_snapshots(store, names[:-2])  # pins and the newest stay
            stats = gc.collect(store, repack_below=0.9)
            rounds += 1
            reclaimed += stats.reclaimed_bytes
            repacked += stats.packs_repacked
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert rounds >= 3 and reclaimed > 0 and repacked > 0, (rounds, reclaimed, repacked)
    store.flush()
    report = verify(store, read_data=True)
    assert report.ok, (report.summary(), report.problems, report.damaged[:3])
    remaining = [r.name for r in store.list_snapshots()]
    assert set(pinned) <= set(remaining)
    for name in remaining:
        assert _contents(store, name) == expected[name]
    store.close()
