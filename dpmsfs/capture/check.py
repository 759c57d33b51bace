"""Consistency of the capture state with the store: every content id it holds is indexed."""

from __future__ import annotations

import os

from dpmsfs.capture import state
from dpmsfs.capture.ingest import UNBUILT_SUBTREE
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType

MAX_REPORTED = 100


def check_capture_state(store: Store) -> list[str]:
    """Problems found (empty if consistent): content or subtree ids missing from the index."""
    problems: list[str] = []
    store.db.declare(*state.ALL_TABLES)
    missing = 0
    with store.db.read() as txn:
        for key, value in txn.cursor_range(state.T_FILES):
            file_state = state.decode_state(value)
            entry = file_state.entry
            if entry.type not in (EntryType.FILE, EntryType.DIR):
                continue
            for oid in entry.content:
                if entry.type == EntryType.DIR and oid == UNBUILT_SUBTREE:
                    continue  # captured, its tree not built yet (the next snapshot does)
                if store.locate(oid, txn) is None:
                    missing += 1
                    if len(problems) < MAX_REPORTED:
                        path = os.fsdecode(state.key_path(txn, key) or b"?")
                        problems.append(f"captured {path} refers to missing object {oid.hex()}")
    if missing > len(problems):
        problems.append(f"... {missing - len(problems)} more missing references")
    return problems
