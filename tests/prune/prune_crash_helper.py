"""Crash-test pruner: writes snapshots and prunes them in a loop until killed.

Run as ``python -m tests.prune.prune_crash_helper STORE SEED``. A writer thread adds
snapshots reusing a pool of contents (dedup against objects that are dead at the mark);
the main thread forgets all but the pinned and the newest two and collects with
aggressive repacking. Prints ``ready`` once, then ``pinned NAME`` for the snapshot it
pins: the test kills it with SIGKILL at a random instant and checks the store.
"""

from __future__ import annotations

import os
import random
import sys
import threading

from dpmsfs.store import SnapshotRecord, Store, gc
from tests.unit.store_util import IDENTITY, T0, write_tree_from_dict

POOL = [random.Random(i).randbytes(random.Random(i).randint(1_000, 40_000)) for i in range(30)]


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    if os.path.exists(path):
        store = Store.open(path, IDENTITY, pack_size=64 << 10)
    else:
        store = Store.create(path, IDENTITY, pack_size=64 << 10)
    step = [0]
    lock = threading.Lock()

    def take(r: random.Random) -> str:
        files = {f"d{i % 3}/f{i}": r.choice(POOL) for i in range(r.randint(1, 6))}
        with store.references():
            root = write_tree_from_dict(store, files)
            store.flush()
            with lock:
                step[0] += 1
                t = T0 + seed * 10**12 + step[0] * 10**9
            name = store.new_snapshot_name(t)
            store.add_snapshot(SnapshotRecord(name, t, root))
        return name

    first = take(rng)
    gc.pin(store, first)
    print("ready", flush=True)
    print(f"pinned {first}", flush=True)

    def writer() -> None:
        r = random.Random(seed + 1000)
        while True:
            take(r)

    threading.Thread(target=writer, daemon=True).start()
    while True:
        names = [r.name for r in store.list_snapshots()]
        gc.forget_snapshots(store, names[:-2])
        gc.collect(store, repack_below=0.95)


if __name__ == "__main__":
    main()
