"""Snapshots: rebuild the trees of changed directories, then record the root.

Incremental: only directories marked dirty (something in them changed since the last
snapshot) are encoded again, deepest first; each new tree id is written into its
parent's entry, which makes the parent dirty in turn, up to the root. Unchanged
subtrees keep their tree ids and are shared between snapshots.

Write order (see docs/design.md): tree objects go into packs, the store flushes (packs
fsynced, then indexed), then the directory entries get their new tree ids, then the
snapshot record is added. A crash anywhere leaves garbage, never a dangling reference.
"""

from __future__ import annotations

import heapq
import logging
import threading
from typing import NamedTuple

from dpmsfs.capture import state
from dpmsfs.clock import Clock
from dpmsfs.store.db import Database, WriteTxn
from dpmsfs.store.schema import ObjectType
from dpmsfs.store.snapshots import SnapshotRecord, SnapshotStats
from dpmsfs.store.store import Store
from dpmsfs.store.tree import (
    ENTRY_TYPE_OFFSET,
    TREE_HEADER_SIZE,
    EntryType,
    decode_tree,
    encode_tree,
    tree_from_encoded,
)

log = logging.getLogger(__name__)

META_LAST_ROOT = b"last_root"
META_STORED_AT_LAST = b"stored_at_last_snapshot"


class TreeUpdate(NamedTuple):
    dir_id: int
    tree_id: bytes


def build_trees(db: Database, store: Store) -> tuple[bytes, list[TreeUpdate]]:
    """Encode every dirty directory bottom-up; returns the root tree id and the updates.

    Reads one consistent LMDB snapshot; the caller holds the capture write lock so no
    one changes the state between this read and `commit_trees`.
    """
    updates: dict[int, bytes] = {}
    with db.read() as txn:
        dirty = state.dirty_dirs(txn)
        raw_root = txn.get(state.T_META, META_LAST_ROOT)
        if not dirty and raw_root is not None:
            return raw_root, []
        heap = []
        for dir_id in {*dirty, state.ROOT_ID}:
            level = state.depth(txn, dir_id)
            if level >= 0:  # else: no longer in the namespace
                heap.append((-level, dir_id))
        heapq.heapify(heap)
        queued = {d for _, d in heap}
        while heap:
            _, dir_id = heapq.heappop(heap)
            parts = []
            for name, encoded in state.raw_children(txn, dir_id):
                if encoded[ENTRY_TYPE_OFFSET] == EntryType.DIR:
                    sub = state.child_dir(txn, dir_id, name)
                    if sub is not None and sub in updates:
                        (entry,) = decode_tree(tree_from_encoded([encoded]))
                        entry = entry._replace(content=(updates[sub],))
                        encoded = encode_tree([entry])[TREE_HEADER_SIZE:]
                parts.append(encoded)
            # Entries are stored encoded: a tree is their concatenation, so a snapshot
            # after a change in a 1,000-entry directory does not decode 999 others.
            tree_id, _ = store.write_object(ObjectType.TREE, tree_from_encoded(parts))
            updates[dir_id] = tree_id
            parent = state.dir_parent(txn, dir_id)
            if parent is not None and parent[0] not in queued:
                queued.add(parent[0])
                heapq.heappush(heap, (-(state.depth(txn, parent[0])), parent[0]))
    return updates[state.ROOT_ID], [TreeUpdate(d, t) for d, t in updates.items()]


def commit_trees(txn: WriteTxn, root_id: bytes, updates: list[TreeUpdate]) -> None:
    for dir_id, tree_id in updates:
        txn.delete(state.T_DIRTY, dir_id.to_bytes(8, "big"))
        parent = state.dir_parent(txn, dir_id)
        if parent is None:
            continue
        key = state.entry_key(*parent)
        current = state.get_state(txn, key)
        if current is None:
            continue
        entry = current.entry._replace(content=(tree_id,))
        txn.put(state.T_FILES, key, state.encode_state(current._replace(entry=entry)))
    txn.put(state.T_META, META_LAST_ROOT, root_id)


def take_snapshot(
    db: Database,
    store: Store,
    clock: Clock,
    write_lock: threading.Lock,
    label: str = "",
    tool_id: str = "",
) -> SnapshotRecord:
    """Build the trees and record a snapshot of the capture state as it is now."""
    # the reference span: a prune waits for it (ids read from the state, then named by trees)
    with store.references(), write_lock:
        root_id, updates = build_trees(db, store)
        store.flush()  # trees indexed before anything refers to them
        db.transact(lambda txn: commit_trees(txn, root_id, updates))
        with db.read() as txn:
            files, total_bytes = state.totals(txn)
            raw_last = txn.get(state.T_META, META_STORED_AT_LAST)
        stored = store.stats().stored_bytes
        last = int.from_bytes(raw_last, "big") if raw_last else 0
        now_ns = clock.now_ns()
        record = SnapshotRecord(
            name=store.new_snapshot_name(now_ns),
            time_utc_ns=now_ns,
            root_tree_id=root_id,
            label=label,
            tool_id=tool_id,
            stats=SnapshotStats(files=files, bytes=total_bytes, new_bytes=max(0, stored - last)),
        )
        store.add_snapshot(record)
        db.transact(
            lambda txn: txn.put(state.T_META, META_STORED_AT_LAST, stored.to_bytes(8, "big"))
        )
    log.info("snapshot %s: %d files, %d trees rebuilt", record.name, files, len(updates))
    return record
