"""The local content-addressed store: packs of compressed chunks, an LMDB index, trees and
snapshot records.  Only `db.py` imports lmdb; nothing here imports trio or pyfuse3.

Entry points: `Store.create` / `Store.open`, `verify`.  Formats: docs/design.md.
"""

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
