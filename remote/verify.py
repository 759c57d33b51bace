"""`dpmsfs-server verify`: re-hash every stored record and move corrupt ones aside.

Quarantining is what closes the loop with the tools: a corrupt object moved out of
`ns/<namespace>/objects` is reported by `objects:missing`, so the next sync re-sends it from
the tool's local store. Safe to run while the server is serving the same directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from remote import objfile
from remote.store import DiskStore, StoredRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    record: StoredRecord
    reason: str
    moved_to: Path | None


@dataclass
class Summary:
    checked: int = 0
    corrupt: int = 0


def scrub(
    store: DiskStore, summary: Summary, namespace: str | None = None, quarantine: bool = True
) -> Iterator[Finding]:
    """Yield one Finding per corrupt record, updating `summary` as it goes."""
    for record in store.iter_records(namespace):
        try:
            reason = objfile.verify_file(record.path)
        except FileNotFoundError:
            continue  # deleted or quarantined meanwhile
        summary.checked += 1
        if reason is None:
            continue
        moved = None
        if quarantine:
            # A tool may have re-sent the object while we hashed it (the server then replaced
            # the corrupt copy): look again right before moving so a healed record stays.
            try:
                if objfile.verify_file(record.path) is None:
                    continue
            except FileNotFoundError:
                continue
            moved = store.quarantine(record, reason)
        summary.corrupt += 1
        yield Finding(record, reason, moved)
