"""One restore, as `dpmsfs restore` runs it and as the daemon runs it for the CLI.

A restore of a few named files is mostly start-up cost when the CLI does it itself:
from a cold page cache, importing lmdb, zstandard, xxhash and the store took longer
than the restore (docs/benchmarks.md). When the work directory is mounted, the CLI
therefore asks the running daemon, which has all of that loaded and the store open, to
restore *small* selections (`is_small`); larger ones run in the CLI, with progress.

Paths are checked again here whoever sent them (paths.checked_path): the daemon runs
as root and must never write outside the target it was given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpmsfs.browse.paths import checked_path
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.restore import Progress, Restorer, RestoreStats, open_dir_beneath

__all__ = ["Job", "RestoreStats", "is_small", "job_from_request", "restore", "select"]
from dpmsfs.errors import NotFoundError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.tree import EntryType, TreeEntry

# What the daemon restores for the CLI; anything larger runs in the CLI with progress.
SMALL_ENTRIES = 256
SMALL_BYTES = 64 << 20

Selection = list[tuple[bytes, TreeEntry]]


def select(
    reader: SnapshotReader, snapshot: str, paths: list[bytes]
) -> tuple[SnapshotRecord, Selection]:
    """The snapshot and the entries named by `paths` (none: the whole tree)."""
    record = reader.snapshot(snapshot)
    selection: Selection = []
    for path in paths:
        entry = reader.lookup(record.root_tree_id, checked_path(path)) if path else None
        if entry is None:
            raise NotFoundError(f"{os.fsdecode(path)} is not in snapshot {record.name}")
        selection.append((checked_path(path), entry))
    return record, selection


def is_small(reader: SnapshotReader, selection: Selection) -> bool:
    """At most SMALL_ENTRIES entries and SMALL_BYTES of file data; stops counting early."""
    if not selection:
        return False  # the whole tree
    entries = 0
    data = 0
    for _, top in selection:
        below = reader.walk(top.content[0]) if top.type == EntryType.DIR else iter(())
        for entry in (top, *(e for _, e in below)):
            entries += 1
            data += entry.size if entry.type == EntryType.FILE else 0
            if entries > SMALL_ENTRIES or data > SMALL_BYTES:
                return False
    return True


def restore(
    reader: SnapshotReader,
    record: SnapshotRecord,
    selection: Selection,
    target: Path,
    *,
    in_place: bool,
    force: bool,
    progress: Progress | None = None,
    keep_identical: bool = False,
    workers: int = 2,
    early_writeback: bool = False,
) -> RestoreStats:
    """Restore `selection` (empty: the whole tree) of `record` under `target`.
    `keep_identical`: files already there with the snapshot's content are kept (resume)."""
    restorer = Restorer(
        reader,
        overwrite=in_place or force,
        delete_extra=in_place,
        restore_owner=True,
        progress=progress,
        workers=workers,
        keep_identical=keep_identical,
        early_writeback=early_writeback,
    )
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not selection:
            restorer.restore_tree(record.root_tree_id, target_fd)
        for path, entry in selection:
            parent_fd = open_dir_beneath(target_fd, path.rpartition(b"/")[0], create=True)
            try:
                restorer.restore_entry(entry, parent_fd)
            finally:
                os.close(parent_fd)
        # No sync: restored data reaches the disk by the kernel's normal writeback,
        # as with cp, restic and borg (a sync after restoring 2.3 GB took 1.0 s here).
    finally:
        os.close(target_fd)
        restorer.close()
    return restorer.stats


@dataclass
class Job:
    """A restore the daemon was asked to run for the CLI."""

    record: SnapshotRecord
    selection: Selection
    target: Path
    in_place: bool
    force: bool


def job_from_request(reader: SnapshotReader, workdir: Path, request: dict[str, Any]) -> Job | None:
    """The restore a control request asks for, or None if it is not small (then the CLI
    runs it itself, with progress). Malformed requests raise ValueError."""
    snapshot, paths, to, force = (request.get(k) for k in ("snapshot", "paths", "to", "force"))
    if not isinstance(snapshot, str) or not snapshot:
        raise ValueError("snapshot must be a non-empty string")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError("paths must be a non-empty list of strings")
    if to is not None and (not isinstance(to, str) or not os.path.isabs(to)):
        raise ValueError("to must be an absolute path")
    if not isinstance(force, bool):
        raise ValueError("force must be true or false")
    record, selection = select(reader, snapshot, [os.fsencode(p) for p in paths])
    if not is_small(reader, selection):
        return None
    target = workdir if to is None else Path(to)
    if not target.is_dir():
        raise NotFoundError(f"{target}: no such directory")
    return Job(record, selection, target, in_place=to is None, force=force)
