"""Crash-test writer: writes random chunks and flushes in a loop until killed.

Run as ``python -m tests.unit.store_crash_helper STORE SEED``.  After every flush (and the
snapshot that follows it) it prints the hex ids that are now durable, one batch per line,
with flush=True: the test kills it with SIGKILL at a random instant and then checks that
every printed id is readable and correct.
"""

from __future__ import annotations

import os
import random
import sys

from dpmsfs.store import EntryType, SnapshotRecord, Store, TreeEntry
from tests.unit.store_util import IDENTITY, T0


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    if os.path.exists(path):
        store = Store.open(path, IDENTITY, pack_size=96 << 10)
    else:
        store = Store.create(path, IDENTITY, pack_size=96 << 10)
    print("ready", flush=True)
    step = 0
    while True:
        ids = []
        for _ in range(rng.randint(1, 12)):
            size = rng.randint(1, 48 << 10)
            data = rng.randbytes(size) if rng.random() < 0.5 else bytes(size // 2) + b"x" * 7
            ids.append(store.write_chunk(data)[0])
        entry = TreeEntry(b"f%d" % step, EntryType.FILE, 0o644, 0, 0, 0, 0, content=tuple(ids))
        root, _ = store.write_tree([entry])
        store.flush()
        t = T0 + seed * 10**12 + step * 10**9
        store.add_snapshot(SnapshotRecord(store.new_snapshot_name(t), t, root))
        print(" ".join(i.hex() for i in [*ids, root]), flush=True)
        step += 1


if __name__ == "__main__":
    main()
