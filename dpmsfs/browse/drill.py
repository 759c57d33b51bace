"""A restore drill: prove that files can come back from the server, and how fast.

Picks a random older snapshot on the server (not the newest, which the sync just wrote and
which says least about what survives there), a random sample of its regular files
(reservoir sampling during one walk of the tree), restores each from the server into a
scratch directory, and checks every restored file byte for byte: against the same file of
the same snapshot in the local store when the store still holds it, else against the chunk
ids recorded in the snapshot's tree (each chunk id is the hash of the chunk's plain bytes,
so re-reading the file from disk at the recorded boundaries checks what was written). The
time of the first file is the RTO of one file; the time of the whole sample is reported
beside it.

The result lives beside the store (`last-drill.json`, atomically replaced; format in
docs/operations.md), so `dpmsfs status` shows it with the daemon down, and it is reported
to the server for the fleet page.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chunker.ids import chunk_id
from dpmsfs.browse.reader import SnapshotReader, display
from dpmsfs.browse.source import RemoteSource
from dpmsfs.errors import DpmsError
from dpmsfs.jsonfile import read_json_object, write_json
from dpmsfs.store import evicted, gc
from dpmsfs.store.errors import StoreError
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry

log = logging.getLogger(__name__)

DRILL_FILE = "last-drill.json"
DEFAULT_SAMPLE = 20


@dataclass
class DrillResult:
    ok: bool
    time_utc_ns: int
    snapshot: str = ""
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    first_file_seconds: float = 0.0
    compared_with: str = ""  # "local store", "chunk ids" or "local store and chunk ids"
    message: str = ""
    mismatches: list[str] = field(default_factory=list)

    def to_report(self) -> dict[str, Any]:
        """The `drill` object of a server report (docs/remote-api.md)."""
        keys = ("ok", "time_utc_ns", "snapshot", "files", "bytes", "seconds",
                "first_file_seconds", "message")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


def sample_files(
    reader: SnapshotReader, root_tree_id: bytes, count: int, rng: random.Random
) -> list[tuple[bytes, TreeEntry]]:
    """Up to `count` regular files chosen uniformly in one pass (reservoir sampling)."""
    chosen: list[tuple[bytes, TreeEntry]] = []
    seen = 0
    for path, entry in reader.walk(root_tree_id):
        if entry.type != EntryType.FILE:
            continue
        seen += 1
        if len(chosen) < count:
            chosen.append((path, entry))
        else:
            slot = rng.randrange(seen)
            if slot < count:
                chosen[slot] = (path, entry)
    return sorted(chosen)


def choose_snapshot(names: list[str], rng: random.Random) -> str:
    """A random snapshot other than the newest (unless it is the only one)."""
    older = names[:-1] or names
    return rng.choice(older)


def run_drill(
    server: RemoteSource,
    local: Store | None,
    *,
    sample: int = DEFAULT_SAMPLE,
    scratch_parent: Path | None = None,
    rng: random.Random | None = None,
    snapshot: str | None = None,
) -> DrillResult:
    """Run one drill; server errors become a failed result, never an exception."""
    rng = rng or random.Random()
    now_ns = time.time_ns()
    try:
        names = server.snapshot_names()
        if not names:
            return DrillResult(False, now_ns, message="the server holds no snapshots")
        name = snapshot or choose_snapshot(names, rng)
        record = server.get_snapshot(name)
        if record is None:
            return DrillResult(False, now_ns, name, message=f"no snapshot {name} on the server")
        remote_reader = SnapshotReader(server)
        files = sample_files(remote_reader, record.root_tree_id, sample, rng)
    except DpmsError as exc:
        return DrillResult(False, now_ns, snapshot or "", message=f"server: {exc}")
    lease = contextlib.ExitStack()  # the local copy compared with stays while compared
    local_root = _local_root(local, name)
    if local is not None and local_root is not None:
        try:
            lease.enter_context(gc.lease(local, name))
        except StoreError:  # forgotten by a prune just now: compare with the chunk ids
            local_root = None
    scratch = Path(tempfile.mkdtemp(prefix="dpmsfs-drill-", dir=scratch_parent))
    result = DrillResult(True, now_ns, name)
    used: set[str] = set()
    started = time.monotonic()
    try:
        for index, (path, entry) in enumerate(files):
            one_start = time.monotonic()
            target = scratch / f"{index:05d}"
            try:
                boundaries = _restore_one(remote_reader, entry, target)
            except DpmsError as exc:
                result.mismatches.append(f"{display(path)}: not restored: {exc}")
                continue
            except OSError as exc:
                raise DpmsError(f"drill scratch {scratch}: {exc.strerror}") from None
            if index == 0:
                result.first_file_seconds = time.monotonic() - one_start
            problem = _check(target, entry, boundaries, local, local_root, path, used)
            if problem:
                result.mismatches.append(f"{display(path)}: {problem}")
            result.files += 1
            result.bytes += entry.size
            target.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lease.close()
    result.seconds = time.monotonic() - started
    result.compared_with = " and ".join(sorted(used))
    result.ok = not result.mismatches
    if result.mismatches:
        result.message = f"{len(result.mismatches)} of {len(files)} files failed: " + "; ".join(
            result.mismatches[:3]
        )
    elif not files:
        result.message = "the snapshot holds no regular files"
    return result


def _local_root(local: Store | None, name: str) -> bytes | None:
    if local is None:
        return None
    record = local.get_snapshot(name)
    if record is None or evicted.is_evicted(local, name):
        return None  # not (or no longer all) local: compare with the recorded chunk ids
    return record.root_tree_id


def _restore_one(reader: SnapshotReader, entry: TreeEntry, target: Path) -> list[int]:
    """Write the file from the server; return its chunk lengths (for the id check)."""
    lengths = []
    with open(target, "wb") as f:
        for chunk in reader.iter_content(entry):
            f.write(chunk)
            lengths.append(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return lengths


def _check(
    target: Path,
    entry: TreeEntry,
    lengths: list[int],
    local: Store | None,
    local_root: bytes | None,
    path: bytes,
    used: set[str],
) -> str:
    """'' if the restored file is right, else what is wrong."""
    if target.stat().st_size != entry.size:
        return f"size {target.stat().st_size}, the snapshot says {entry.size}"
    if len(lengths) != len(entry.content):
        return "chunk count differs from the snapshot's tree"
    with open(target, "rb") as f:
        for n, (oid, length) in enumerate(zip(entry.content, lengths, strict=True)):
            if chunk_id(f.read(length)) != oid:
                return f"chunk {n} does not hash to its recorded id"
    used.add("chunk ids")
    if local is None or local_root is None:
        return ""
    local_entry = SnapshotReader(local).lookup(local_root, path)
    if local_entry is None:
        return "missing in the local store's copy of the snapshot"
    with open(target, "rb") as f:
        for chunk in SnapshotReader(local).iter_content(local_entry):
            if f.read(len(chunk)) != chunk:
                return "differs from the local store"
        if f.read(1):
            return "longer than the local store's copy"
    used.add("local store")
    return ""


def record_result(store_dir: Path, result: DrillResult) -> None:
    """Remember the result beside the store (durably); logged on failure."""
    path = store_dir / DRILL_FILE
    try:
        write_json(path, asdict(result))
    except OSError as exc:
        log.warning("cannot record the drill result in %s: %s", path, exc)


def last_result(store_dir: Path) -> dict[str, Any] | None:
    return read_json_object(store_dir / DRILL_FILE)
