"""Helpers shared by the store tests (and the crash helper script)."""

from __future__ import annotations

import io
import os
from typing import Any

from chunker import DEFAULT_PARAMS, iter_chunks
from dpmsfs.store import EntryType, SnapshotRecord, Store, TreeEntry

IDENTITY = DEFAULT_PARAMS.identity
T0 = 1_714_564_800 * 10**9  # 2024-05-01T120000Z


def new_store(path: str, **kwargs: Any) -> Store:
    return Store.create(path, IDENTITY, store_id="test", **kwargs)


def store_file(store: Store, data: bytes) -> tuple[bytes, ...]:
    read = io.BytesIO(data).read
    return tuple(store.write_chunk(c)[0] for c in iter_chunks(read, DEFAULT_PARAMS, 1 << 20))


def write_tree_from_dict(store: Store, files: dict[str, bytes]) -> bytes:
    """Store a tree of ``{"dir/sub/name": content}``; return the root tree id."""
    dirs: dict[str, dict[str, bytes]] = {}
    top: dict[str, bytes] = {}
    for path, data in files.items():
        head, _, rest = path.partition("/")
        if rest:
            dirs.setdefault(head, {})[rest] = data
        else:
            top[head] = data
    entries = [
        TreeEntry(name.encode(), EntryType.FILE, 0o644, 1000, 1000, len(data), T0,
                  content=store_file(store, data))
        for name, data in top.items()
    ]  # fmt: skip
    for name, sub in dirs.items():
        sub_id = write_tree_from_dict(store, sub)
        entries.append(TreeEntry(name.encode(), EntryType.DIR, 0o755, 0, 0, 0, T0,
                                 content=(sub_id,)))  # fmt: skip
    return store.write_tree(entries)[0]


def snapshot(store: Store, files: dict[str, bytes], time_ns: int = T0, label: str = "") -> str:
    """Store ``files`` as a snapshot, in the documented write order; return its name."""
    root = write_tree_from_dict(store, files)
    store.flush()
    name = store.new_snapshot_name(time_ns)
    store.add_snapshot(SnapshotRecord(name, time_ns, root, label=label, tool_id="t1"))
    return name


def random_files(n: int, size: int, seed: int) -> dict[str, bytes]:
    import random

    rng = random.Random(seed)
    return {f"d{i % 3}/f{i}.bin": rng.randbytes(size) for i in range(n)} | {
        "top.txt": os.urandom(100)
    }
