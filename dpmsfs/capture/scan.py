"""Reconciliation scan: compare the real tree with the capture state, journal the differences.

Run at every mount (it is how the first mount imports an existing directory, and how
changes made while dpmsfs was not running are found) and for a subtree whose history
the journal cannot tell (RENAME_EXCHANGE of directories, a dropped event buffer).

One directory at a time: its real entries (one `scandir`) are merged with its captured
entries (one LMDB prefix scan), so memory grows with the largest directory, never with
the tree. Differences are committed to the journal in batches; ingest does the reading.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass, field

from dpmsfs.capture import state
from dpmsfs.capture.ingest import open_parent
from dpmsfs.capture.state import FileState, Pending
from dpmsfs.clock import Clock
from dpmsfs.config import is_excluded
from dpmsfs.store.db import Database, WriteTxn

log = logging.getLogger(__name__)

BATCH = 2000


@dataclass
class ScanProgress:
    running: bool = False
    directories: int = 0
    entries: int = 0
    differences: int = 0
    bytes_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def differs(previous: FileState | None, st: os.stat_result) -> bool:
    if previous is None:
        return True
    if stat.S_ISDIR(st.st_mode):
        # A directory's mtime/ctime change with every entry change; its own metadata
        # is what matters here (its entries are compared one by one).
        entry = previous.entry
        return (entry.mode, entry.uid, entry.gid) != (
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
        ) or previous.ino != st.st_ino
    return (previous.ino, previous.entry.size, previous.entry.mtime_ns, previous.ctime_ns) != (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _list_dir(root_fd: int, path: bytes) -> list[tuple[bytes, os.stat_result]] | None:
    try:
        if path:
            parent_fd, name = open_parent(root_fd, path)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=parent_fd)  # fmt: skip
            finally:
                os.close(parent_fd)
        else:
            fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        result = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    result.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return result
    finally:
        os.close(fd)


def scan(
    root_fd: int,
    db: Database,
    clock: Clock,
    exclude: tuple[str, ...],
    start: bytes = b"",
    progress: ScanProgress | None = None,
    write_lock: threading.Lock | None = None,
) -> int:
    """Journal every difference under directory `start`; returns how many were found."""
    progress = progress or ScanProgress()
    lock = write_lock or threading.Lock()
    progress.running = True
    pending: list[tuple[bytes, Pending]] = []  # (path, flags): keys are made at commit
    found = 0

    def commit() -> None:
        if not pending:
            return
        now_ns = clock.now_ns()
        batch = list(pending)

        def body(txn: WriteTxn) -> None:
            for path, flags in batch:
                state.note_path(txn, path, flags, now_ns)

        with lock:
            db.transact(body)
        pending.clear()

    stack = [start]
    try:
        while stack:
            directory = stack.pop()
            listing = _list_dir(root_fd, directory)
            with db.read() as txn:
                dir_id = state.lookup_dir(txn, directory)
                captured = dict(state.children(txn, dir_id)) if dir_id is not None else {}
            if listing is None:
                if directory:
                    pending.append((directory, Pending.GONE | Pending.CLOSED))
                continue
            subdirs = []
            before = len(pending)
            for name, st in listing:
                path = state.join(directory, name)
                if directory == b"" and name == b".snapshots":
                    continue
                previous = captured.pop(name, None)
                if is_excluded(name, exclude):
                    if previous is not None:
                        pending.append((path, Pending.GONE | Pending.CLOSED))
                    continue
                with progress.lock:
                    progress.entries += 1
                    if stat.S_ISREG(st.st_mode):
                        progress.bytes_seen += st.st_size
                if differs(previous, st):
                    flags = Pending.CLOSED | (
                        Pending.META if stat.S_ISDIR(st.st_mode) else Pending.CONTENT
                    )
                    pending.append((path, flags))
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(path)
            for name in captured:
                pending.append((state.join(directory, name), Pending.GONE | Pending.CLOSED))
            differences = len(pending) - before
            found += differences
            with progress.lock:
                progress.directories += 1
                progress.differences += differences
            if len(pending) >= BATCH:
                commit()
            stack.extend(reversed(subdirs))
        commit()
    finally:
        progress.running = False
    return found
