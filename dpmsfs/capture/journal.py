"""The change journal: the mount's change events made durable by group commits.

`ChangeJournal.record()` is the mount's `ChangeSink`: it appends to an in-memory list,
nothing more, on the FUSE loop. `flush()` (run from a worker thread about every half
second) writes all buffered events to the ``cap_journal`` table in one LMDB transaction:
one fsync per group, never one per write.

If the store cannot be written (disk full, failing disk), events stay buffered; past
`MAX_BUFFERED` the buffer is dropped and a rescan is requested instead, so memory stays
bounded and nothing is lost: the reconciliation scan finds every difference between
the tree and the capture state.
"""

from __future__ import annotations

import logging
import threading

from dpmsfs.capture import state
from dpmsfs.capture.state import Pending
from dpmsfs.clock import Clock
from dpmsfs.fs.changes import ChangeEvent, ChangeKind
from dpmsfs.store.db import Database, WriteTxn

log = logging.getLogger(__name__)

MAX_BUFFERED = 200_000

_FLAGS = {
    ChangeKind.CREATE: Pending.CONTENT,
    ChangeKind.WRITE: Pending.CONTENT,
    ChangeKind.TRUNCATE: Pending.CONTENT,
    ChangeKind.CLOSE_WRITE: Pending.CONTENT | Pending.CLOSED,
    ChangeKind.SETATTR: Pending.META,
    ChangeKind.XATTR: Pending.META,
    ChangeKind.LINK: Pending.CONTENT | Pending.CLOSED,
    ChangeKind.MKDIR: Pending.META | Pending.CLOSED,
    ChangeKind.SYMLINK: Pending.CONTENT | Pending.CLOSED,
    ChangeKind.MKNOD: Pending.META | Pending.CLOSED,
    ChangeKind.UNLINK: Pending.GONE | Pending.CLOSED,
    ChangeKind.RMDIR: Pending.GONE | Pending.CLOSED,
}


class ChangeJournal:
    """Buffer change events on the FUSE loop; commit them in groups."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._buffer: list[ChangeEvent] = []
        self._lock = threading.Lock()  # between the FUSE thread and the flushing thread
        self.rescan_needed = False
        self.flushed_events = 0

    def record(self, kind: ChangeKind, path: bytes, old_path: bytes | None = None) -> None:
        # list.append is atomic under the GIL; the lock only guards the swap in flush().
        self._buffer.append(ChangeEvent(kind, path, old_path))
        if len(self._buffer) > MAX_BUFFERED:
            with self._lock:
                if len(self._buffer) > MAX_BUFFERED:
                    log.warning("journal buffer overflow: dropping events, rescan requested")
                    self._buffer = []
                    self.rescan_needed = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Commit buffered events; returns how many. Raises StoreFullError and keeps them."""
        with self._lock:
            events, self._buffer = self._buffer, []
        if not events:
            return 0
        now_ns = self._clock.now_ns()
        try:
            self._db.transact(lambda txn: apply_events(txn, events, now_ns))
        except BaseException:
            with self._lock:
                self._buffer[:0] = events  # keep order: these came first
            raise
        self.flushed_events += len(events)
        return len(events)


def apply_events(txn: WriteTxn, events: list[ChangeEvent], now_ns: int) -> None:
    """Fold events, in order, into the journal and (for renames) the capture state."""
    for event in events:
        if event.kind in (ChangeKind.RENAME, ChangeKind.EXCHANGE):
            assert event.old_path is not None
            old_parent, old_name = state.split(event.old_path)
            new_parent, new_name = state.split(event.path)
            old_key = state.entry_key(state.ensure_dir(txn, old_parent), old_name)
            new_key = state.entry_key(state.ensure_dir(txn, new_parent), new_name)
            if event.kind == ChangeKind.RENAME:
                state.move_entry(txn, old_key, new_key)
            else:
                state.exchange_entries(txn, old_key, new_key)
                state.note_pending(txn, old_key, Pending.MOVED | Pending.META, now_ns)
            state.note_pending(txn, new_key, Pending.MOVED | Pending.META, now_ns)
        else:
            state.note_path(txn, event.path, _FLAGS[event.kind], now_ns)
