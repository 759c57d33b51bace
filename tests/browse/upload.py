"""Put a local store's snapshot on a server through a /v2 `Backend`, the way the daemon's
sync does (objects first, the snapshot ref last: the HA invariant), so restore tests
have server contents without depending on the sync code."""

from __future__ import annotations

import hashlib
from typing import Any

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.source import SNAPSHOT_REF_PREFIX
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType


def snapshot_objects(store: Store, name: str) -> list[bytes]:
    """Ids of every object a snapshot reaches (trees and chunks), each once."""
    reader = SnapshotReader(store)
    record = reader.snapshot(name)
    seen = dict.fromkeys([record.root_tree_id])
    for _, entry in reader.walk(record.root_tree_id):
        if entry.type in (EntryType.DIR, EntryType.FILE):
            seen.update(dict.fromkeys(entry.content))
    return list(seen)


def upload_snapshot(store: Store, backend: Any, name: str, batch: int = 64) -> int:
    """Upload snapshot `name` (objects the server lacks, then its ref); objects sent."""
    record = SnapshotReader(store).snapshot(name)
    frames = {}
    for oid in snapshot_objects(store, name):
        location = store.locate(oid)
        assert location is not None, f"object {oid.hex()} not indexed"
        frame = bytes(store.read_blob(location, oid))
        plain = store.decode_blob(oid, frame, location.pack_id)
        frames[oid.hex()] = (hashlib.sha256(plain).hexdigest(), frame)
    missing = backend.missing([(oid, sha) for oid, (sha, _) in frames.items()])
    for start in range(0, len(missing), batch):
        part = missing[start : start + batch]
        results = backend.upload([(oid, frames[oid][0], frames[oid][1]) for oid in part])
        bad = {k: v for k, v in results.items() if v not in ("created", "exists")}
        assert not bad, f"upload refused: {bad}"
    backend.put_ref(SNAPSHOT_REF_PREFIX + record.name, record.encode())
    return len(missing)
