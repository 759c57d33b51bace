"""The local content-addressed store: packs of compressed chunks, an LMDB index, trees and
snapshot records.  Only `db.py` imports lmdb; nothing here imports trio or pyfuse3.

Entry points: `Store.create` / `Store.open`, `verify`.  Formats: docs/design.md.

Names are imported on first use: `dpmsfs restore` of one file should not pay for
verify and the rest at start-up (it is timed from a cold cache).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpmsfs.store.errors import (
        CorruptObjectError,
        ObjectNotFoundError,
        StoreError,
        StoreFullError,
        StoreLockedError,
        TreeFormatError,
    )
    from dpmsfs.store.schema import ObjectType
    from dpmsfs.store.snapshots import SnapshotRecord, SnapshotStats, snapshot_name
    from dpmsfs.store.store import Store, StoreStats
    from dpmsfs.store.tree import EntryType, TreeEntry, decode_tree, encode_tree
    from dpmsfs.store.verify import DamagedObject, VerifyReport, verify

_WHERE = {
    "CorruptObjectError": "dpmsfs.store.errors",
    "ObjectNotFoundError": "dpmsfs.store.errors",
    "StoreError": "dpmsfs.store.errors",
    "StoreFullError": "dpmsfs.store.errors",
    "StoreLockedError": "dpmsfs.store.errors",
    "TreeFormatError": "dpmsfs.store.errors",
    "ObjectType": "dpmsfs.store.schema",
    "SnapshotRecord": "dpmsfs.store.snapshots",
    "SnapshotStats": "dpmsfs.store.snapshots",
    "snapshot_name": "dpmsfs.store.snapshots",
    "Store": "dpmsfs.store.store",
    "StoreStats": "dpmsfs.store.store",
    "EntryType": "dpmsfs.store.tree",
    "TreeEntry": "dpmsfs.store.tree",
    "decode_tree": "dpmsfs.store.tree",
    "encode_tree": "dpmsfs.store.tree",
    "DamagedObject": "dpmsfs.store.verify",
    "VerifyReport": "dpmsfs.store.verify",
    "verify": "dpmsfs.store.verify",
}

__all__ = [
    "CorruptObjectError",
    "DamagedObject",
    "EntryType",
    "ObjectNotFoundError",
    "ObjectType",
    "SnapshotRecord",
    "SnapshotStats",
    "Store",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreStats",
    "TreeEntry",
    "TreeFormatError",
    "VerifyReport",
    "decode_tree",
    "encode_tree",
    "snapshot_name",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
