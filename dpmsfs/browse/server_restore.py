"""Restore a snapshot from the server onto an empty disk, resumably.

The target holds a small state file while a restore runs (`STATE_NAME`, removed when
it finishes). Running the same command again after an interruption (kill -9, power
loss, disk full) finds it and resumes: every file already in the target with the
snapshot's size, mtime and chunk ids is kept (restore.py `keep_identical`), so only
what is missing is fetched again. A target that is not empty and holds no such state
is refused unless --force, so a typo in --to cannot mix two trees.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dpmsfs.browse import restore_job
from dpmsfs.browse.durable import sync_filesystem
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.restore import TEMP_PREFIX, RestoreStats
from dpmsfs.browse.source import RemoteSource
from dpmsfs.errors import DpmsError, NotFoundError, UsageError
from dpmsfs.store.snapshots import SnapshotRecord

# Starts with the restore's temporary prefix: never taken for a file of the snapshot.
STATE_NAME = TEMP_PREFIX.decode() + "state.json"
RESTORE_WORKERS = 4  # files written at once; each large file has its own read-ahead


@dataclass
class ServerRestoreResult:
    record: SnapshotRecord
    stats: RestoreStats
    resumed: bool
    fetched_objects: int
    fetched_bytes: int
    seconds: float


def resolve_snapshot(source: RemoteSource, tool: str, name: str) -> SnapshotRecord:
    """The snapshot record on the server, with errors that say what is wrong."""
    names = source.snapshot_names()
    if not names:
        raise NotFoundError(f"the server holds no snapshots of tool {tool} (unknown tool?)")
    if name == "latest":
        name = names[-1]
    record = source.get_snapshot(name) if name in names else None
    if record is None:
        raise NotFoundError(
            f"no snapshot named {name} of tool {tool} on the server "
            f"(latest: {names[-1]}; `dpmsfs snapshots --server ...` lists them)"
        )
    return record


def prepare_target(target: Path, tool: str, snapshot: str, force: bool) -> bool:
    """Make sure `target` may receive the restore; True if it resumes an earlier one."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        present = os.listdir(target)
    except OSError as exc:
        raise DpmsError(f"{target}: {exc.strerror}") from None
    state = _read_state(target)
    resuming = state == {"tool": tool, "snapshot": snapshot}
    if present and not resuming and not force:
        what = "an unfinished restore of another snapshot" if state else "files"
        raise UsageError(f"{target} is not empty (it holds {what}); use --force to restore into it")
    if not resuming:
        _write_state(target, {"tool": tool, "snapshot": snapshot})
    return resuming


def _read_state(target: Path) -> dict[str, str] | None:
    try:
        with open(target / STATE_NAME, "rb") as f:
            doc = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_state(target: Path, doc: dict[str, str]) -> None:
    """Durably, before the first file: a crash must leave a target that resumes."""
    temp = target / (STATE_NAME + ".tmp")
    with open(temp, "w") as f:
        f.write(json.dumps(doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, target / STATE_NAME)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_from_server(
    source: RemoteSource,
    tool: str,
    snapshot: str,
    paths: list[bytes],
    target: Path,
    *,
    force: bool,
    progress: Callable[[RestoreStats], None] | None = None,
    announce: Callable[[SnapshotRecord, bool], None] | None = None,
) -> ServerRestoreResult:
    started = time.monotonic()
    record = resolve_snapshot(source, tool, snapshot)
    reader = SnapshotReader(source)
    record, selection = restore_job.select(reader, record.name, paths)
    resumed = prepare_target(target, tool, record.name, force)
    if announce is not None:
        announce(record, resumed)
    try:
        stats = restore_job.restore(
            reader,
            record,
            selection,
            target,
            in_place=False,
            force=True,  # the target was checked above; resuming replaces partial files
            progress=progress,
            keep_identical=True,
            workers=RESTORE_WORKERS,
            early_writeback=True,
        )
        # Durable before it is called done: the state file goes only once every restored
        # byte is on the disk (one syncfs, not a fsync per file: dpmsfs/browse/durable.py).
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sync_filesystem(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _disk_error(exc, target) from None
    os.unlink(target / STATE_NAME)
    return ServerRestoreResult(
        record,
        stats,
        resumed,
        source.fetched_objects,
        source.fetched_bytes,
        time.monotonic() - started,
    )


def _disk_error(exc: OSError, target: Path) -> DpmsError:
    import errno

    again = "; run the same command again to resume"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DpmsError(f"{target}: disk full, restore interrupted (free space{again})")
    where = f"{exc.filename}: " if exc.filename else ""
    return DpmsError(f"{target}: {where}{exc.strerror}, restore interrupted{again}")
