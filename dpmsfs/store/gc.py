"""Forgetting snapshots, pins, and reclaiming the space of objects nothing refers to.

The protocol is a contract (docs/design.md, "Prune: reclaiming space beside capture");
in short, with capture, sync and snapshot reads running beside it and no global lock:

1. **Guard on.** `Store.start_guard`: from now on every id passed to `write_object`
   (new or deduplicated) is recorded *before* its dedup check.
2. **Grace.** Wait for every `Store.references()` span open now (an ingest batch, a
   snapshot build) to end: ids such a span obtained before the guard was on are then
   committed to the capture state or snapshots, where the mark sees them.
3. **Mark.** In *one* LMDB read transaction take the roots: every snapshot's root tree
   and every id the caller's ``extra_roots`` yields (the capture state: every content id
   in ``cap_files`` must stay indexed). One transaction, because a rename moves a
   ``cap_files`` entry between keys: a scan in batches could miss it. Then the root of
   every held lease (`lease`: a restore reading a snapshot keeps its objects even if the
   snapshot is forgotten meanwhile, across processes). Then walk the trees
   (immutable; only this collector removes objects, one collection at a time).
4. **Grace again**, for spans that began between 1 and 3 (a snapshot that read an id
   from the capture state before the mark, which a later capture then replaced).
5. **Sweep** index entries that are neither marked nor guarded, in small transactions,
   each decided and committed with `Store.guard_lock` held: a writer guards an id
   either before (kept: guarded ids are marked with their subtrees first) or after the
   commit (its dedup check then misses and it writes the object again).
6. **Packs.** A pack with no index entry left is removed from ``packs``, then its file is
   deleted. A pack whose live bytes fall below ``repack_below`` of its size is copied:
   its live records go into a new pack, sealed and fsynced, then one transaction moves
   their index entries (only those still pointing at the old pack) and drops the old
   ``packs`` entry, and only then is the old file deleted. Readers holding an old location
   find the file gone and look the object up again (`Store.read_blob`); an fd opened
   before the delete keeps reading the old file.
7. **Garbage files** (packs no index entry names: a crash between seal and index commit,
   or between 6's commit and its delete) are deleted with the store's flush lock held, so
   a pack being sealed right now is never taken for garbage.

A kill -9 at any instant leaves a store that verifies: every step commits in an order
where the index never names a missing file; what a crash leaves is garbage that the next
collection removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from dpmsfs.store import evicted, schema
from dpmsfs.store.db import ReadTxn, WriteTxn
from dpmsfs.store.errors import ObjectNotFoundError, StoreError
from dpmsfs.store.packs import RECORD, PackWriter, pack_path
from dpmsfs.store.retention import PathMatcher
from dpmsfs.store.schema import ObjectLocation, ObjectType, PackInfo, Totals
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry, decode_tree

log = logging.getLogger(__name__)

T_PINS = "pins"
"""Pinned snapshots. Key: snapshot name (ASCII). Value: JSON ``{"reason", "pinned_ns"}``."""

SWEEP_BATCH = 5_000
REPACK_BELOW = 0.5
_UNBUILT = bytes(16)  # a directory in the capture state whose tree is not built yet

ExtraRoots = Callable[[ReadTxn], Iterable[bytes]]
Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phases "mark" (total -1: unknown), "sweep", "packs"."""


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


class CollectionAbortedError(StoreError):
    """The mark could not read a tree: nothing is swept when liveness is uncertain."""


# -- pins -----------------------------------------------------------------------------


def _has_pins_table(store: Store) -> bool:
    try:
        store.db.declare(T_PINS)
        with store.db.read() as txn:
            txn.count(T_PINS)
    except StoreError:
        return False  # read-only and never created: no pins
    return True


def pins(store: Store) -> dict[str, str]:
    """Pinned snapshot names -> reason."""
    if not _has_pins_table(store):
        return {}
    with store.db.read() as txn:
        return {
            k.decode(): str(json.loads(v).get("reason", "")) for k, v in txn.cursor_range(T_PINS)
        }


def pin(store: Store, name: str, reason: str = "", now_ns: int | None = None) -> None:
    """Pin an existing snapshot: no policy forgets it (`forget_snapshots` skips it)."""
    store.db.declare(T_PINS)
    value = json.dumps({"reason": reason, "pinned_ns": now_ns or time.time_ns()}).encode()

    def body(txn: WriteTxn) -> None:
        if txn.get(schema.T_SNAPSHOTS, name.encode()) is None:
            raise ObjectNotFoundError(f"no snapshot named {name}")
        txn.put(T_PINS, name.encode(), value)

    store.db.transact(body)


def unpin(store: Store, name: str) -> bool:
    """Remove a pin; False if the snapshot was not pinned."""
    store.db.declare(T_PINS)
    return store.db.transact(lambda txn: txn.delete(T_PINS, name.encode()))


# -- forgetting snapshots -------------------------------------------------------------


def forget_snapshots(store: Store, names: Collection[str]) -> list[str]:
    """Delete the records of these snapshots (not pinned ones, not the newest), in one
    transaction; return the names really forgotten. Their space is reclaimed by the
    next `collect`. For the local budget and the sync work as well as for prune."""
    store.db.declare(T_PINS, evicted.T_EVICTED)

    def body(txn: WriteTxn) -> list[str]:
        newest = None
        for key, _ in txn.cursor_range(schema.T_SNAPSHOTS, reverse=True):
            newest = key
            break
        done = []
        for name in names:
            key = name.encode()
            if key == newest or txn.get(T_PINS, key) is not None:
                continue
            if txn.delete(schema.T_SNAPSHOTS, key):
                txn.delete(evicted.T_EVICTED, key)
                done.append(name)
        return done

    forgotten: list[str] = store.db.transact(body)
    if forgotten:
        log.info("forgot %d snapshots: %s", len(forgotten), ", ".join(forgotten))
    return forgotten


# -- leases: a snapshot being read keeps its objects even if forgotten meanwhile --------

LEASES = "leases"


@contextlib.contextmanager
def lease(store: Store, name: str) -> Iterator[SnapshotRecord]:
    """Hold snapshot ``name``'s objects against collection while the block reads it.

    Works across processes (a restore by the CLI beside the daemon's prune): a file
    ``STORE/leases/<name>.<pid>.<random>`` holding the root tree id, flock'ed shared for
    the block. The collector's mark adds the root of every lease whose lock is held, and
    removes lease files nobody holds (a reader killed). The record is looked up *after*
    the lock is held: if it is gone then, the snapshot was forgotten before this lease
    could count and `ObjectNotFoundError` says so; if it is there, any collection that
    has not yet marked will see the lease.
    """
    record = store.get_snapshot(name)
    if record is None:
        raise ObjectNotFoundError(f"no snapshot named {name}")
    directory = os.path.join(store.path, LEASES)
    fd = -1
    path = ""
    try:
        os.makedirs(directory, exist_ok=True)
        while True:
            path = os.path.join(directory, f"{name}.{os.getpid()}.{os.urandom(4).hex()}")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
            os.write(fd, record.root_tree_id.hex().encode())
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # not taken for a stale lease and removed before our lock
            except FileNotFoundError:
                pass
            os.close(fd)
            fd = -1
    except OSError as exc:  # a read-only or full disk: read without a lease
        log.warning("cannot lease snapshot %s (%s): a prune may remove it meanwhile", name, exc)
        if fd >= 0:
            os.close(fd)
        yield record
        return
    try:
        again = store.get_snapshot(name)
        if again is None or again.root_tree_id != record.root_tree_id:
            raise ObjectNotFoundError(f"snapshot {name} was just removed by a prune")
        yield record
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def leased_roots(store: Store) -> list[bytes]:
    """Root trees of leases held now; lease files nobody holds are removed."""
    directory = os.path.join(store.path, LEASES)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    roots = []
    for entry in names:
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a reader is at work
                try:
                    roots.append(bytes.fromhex(os.pread(fd, 64, 0).decode()))
                except ValueError:
                    log.warning("ignoring malformed lease %s", path)
                continue
            # Nobody holds it: its reader is gone, or has just finished (a reader unlinks
            # and then closes, so between our open and here the file may already be gone).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
    return roots


# -- per-path rules: snapshots rewritten without some paths ---------------------------


def rewrite_without(store: Store, name: str, matchers: Sequence[PathMatcher]) -> bool:
    """Rewrite snapshot ``name``'s trees without the paths ``matchers`` match.

    New trees are written and flushed first, then one transaction replaces the record
    (same name and time, new root, ``pruned`` + these patterns) if it still has the old
    root. The old trees become garbage for the next `collect`. A crash leaves either
    the old record or the new one, both complete. Returns False if the snapshot is gone.
    """
    record = store.get_snapshot(name)
    if record is None:
        return False
    patterns = tuple(m.pattern for m in matchers)
    with store.references():  # the new trees name ids a concurrent collection must keep
        memo: dict[tuple[str, bytes], bytes] = {}
        root = _rewrite_tree(store, record.root_tree_id, "", matchers, memo)
        store.flush()
        pruned = tuple(sorted({*record.pruned, *patterns}))
        new = dataclasses.replace(record, root_tree_id=root, pruned=pruned)

        def body(txn: WriteTxn) -> bool:
            current = txn.get(schema.T_SNAPSHOTS, name.encode())
            if (
                current is None
                or SnapshotRecord.decode(current).root_tree_id != record.root_tree_id
            ):
                return False
            if txn.get(schema.T_OBJECTS, root) is None:
                raise StoreError(f"snapshot {name}: rewritten root tree is not indexed")
            txn.put(schema.T_SNAPSHOTS, name.encode(), new.encode())
            return True

        done: bool = store.db.transact(body)
    if done:
        log.info("snapshot %s rewritten without %s (root %s)", name, ", ".join(patterns),
                 root.hex())  # fmt: skip
    return done


def _rewrite_tree(
    store: Store,
    tree_id: bytes,
    prefix: str,
    matchers: Sequence[PathMatcher],
    memo: dict[tuple[str, bytes], bytes],
) -> bytes:
    key = (prefix, tree_id)
    if key in memo:
        return memo[key]
    kept: list[TreeEntry] = []
    changed = False
    for entry in store.read_tree(tree_id):
        path = prefix + os.fsdecode(entry.name)
        if any(m.matches(path) for m in matchers):
            changed = True
            continue
        if entry.type == EntryType.DIR and any(m.may_contain(path) for m in matchers):
            sub = _rewrite_tree(store, entry.content[0], path + "/", matchers, memo)
            if sub != entry.content[0]:
                entry = entry._replace(content=(sub,))
                changed = True
        kept.append(entry)
    result = store.write_tree(kept)[0] if changed else tree_id
    memo[key] = result
    return result


# -- collection -----------------------------------------------------------------------


@dataclass
class CollectStats:
    live_objects: int = 0
    dead_objects: int = 0
    dead_bytes: int = 0  # stored (compressed) bytes of the objects swept
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    garbage_files: int = 0
    reclaimed_bytes: int = 0  # pack file bytes freed on disk (net of repacked copies)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


_running = threading.Lock()  # one collection per process (and the store lock: per store)


def collect(
    store: Store,
    extra_roots: ExtraRoots | None = None,
    *,
    dry_run: bool = False,
    skip_snapshots: Collection[str] = (),
    evict_snapshots: Collection[str] = (),
    repack_below: float = REPACK_BELOW,
    grace_timeout: float | None = 600.0,
    progress: Progress | None = None,
) -> CollectStats:
    """Reclaim the space of every object no snapshot and no capture state refers to.

    Snapshots in the ``local_evicted`` table (store/evicted.py: server-only, the local
    budget) are roots of their *trees* only: the chunks only they name are swept.

    ``dry_run``: change nothing; count what would go, treating ``skip_snapshots`` as
    already forgotten and ``evict_snapshots`` as already server-only (so `dpmsfs prune
    --dry-run` can say what a prune or an eviction would reclaim).
    """
    if store.readonly and not dry_run:
        raise StoreError(f"{store.path} is open read-only: cannot reclaim space")
    if not _running.acquire(blocking=False):
        raise StoreError("a prune is already running in this process")
    started = time.monotonic()
    stats = CollectStats()
    try:
        if not dry_run:
            store.start_guard()
        try:
            _collect(store, extra_roots, dry_run, set(skip_snapshots), set(evict_snapshots),
                     repack_below, grace_timeout, stats, progress or _no_progress)  # fmt: skip
        finally:
            if not dry_run:
                store.stop_guard()
    finally:
        _running.release()
    stats.seconds = round(time.monotonic() - started, 3)
    log.info("collection of %s: %s", store.path, stats)
    return stats


def _collect(
    store: Store,
    extra_roots: ExtraRoots | None,
    dry_run: bool,
    skip: set[str],
    evict: set[str],
    repack_below: float,
    grace_timeout: float | None,
    stats: CollectStats,
    progress: Progress,
) -> None:
    if not dry_run:
        _grace(store, grace_timeout)
    roots: list[bytes] = []
    tree_roots: list[bytes] = []  # server-only snapshots: their trees stay, not their data
    has_evicted = evicted.has_table(store)
    with store.db.read() as txn:  # one consistent view (see the module docstring, 3)
        server_only = evict | (evicted.names_in(txn) if has_evicted else set())
        for key, value in txn.cursor_range(schema.T_SNAPSHOTS):
            name = key.decode()
            if name in skip:
                continue
            root = bytes.fromhex(json.loads(value)["root_tree_id"])
            (tree_roots if name in server_only else roots).append(root)
        if extra_roots is not None:
            roots.extend(oid for oid in extra_roots(txn) if oid != _UNBUILT)
    roots.extend(leased_roots(store))  # after the records: see `lease`
    live: set[bytes] = set()
    _mark(store, roots, live, progress=progress)
    trees: set[bytes] = set()  # kept, but their chunks are not (unless ``live`` has them)
    _mark(store, tree_roots, trees, trees_only=True, skip=live)
    progress("mark", len(live) + len(trees), -1)
    if not dry_run:
        _grace(store, grace_timeout)
    dead = {oid: loc for oid, loc in _candidates(store, live).items() if oid not in trees}
    if dry_run:
        stats.live_objects = len(live)
        stats.dead_objects = len(dead)
        stats.dead_bytes = sum(loc.stored_length for loc in dead.values())
        stats.reclaimed_bytes = stats.dead_bytes
        return
    _sweep(store, dead, live, stats, progress)
    stats.live_objects = len(live)
    _reclaim_packs(store, repack_below, stats, progress)
    _remove_garbage(store, stats)


def _grace(store: Store, timeout: float | None) -> None:
    if not store.wait_for_references(timeout):
        raise StoreError("a capture step did not finish in time; prune will try again later")


def mark_live(store: Store, roots: Iterable[bytes]) -> set[bytes]:
    """Every object reachable from ``roots`` (for planning, e.g. the local budget's: no
    guard, so the result is an estimate that a collection then makes safe)."""
    live: set[bytes] = set()
    _mark(store, (r for r in roots if r != _UNBUILT), live)
    return live


def _mark(
    store: Store,
    roots: Iterable[bytes],
    live: set[bytes],
    *,
    trees_only: bool = False,
    skip: Collection[bytes] = (),
    progress: Progress = _no_progress,
) -> None:
    """Add ``roots`` and everything reachable from them to ``live``; with ``trees_only``
    the trees alone (a server-only snapshot's), not descending below what ``skip`` (the
    fully marked set) already holds: those subtrees are kept with their chunks anyway."""
    stack = [oid for oid in roots if oid not in live and oid not in skip]
    while stack:
        oid = stack.pop()
        if oid in live or oid in skip:
            continue
        live.add(oid)
        if len(live) % 4096 == 0:
            progress("mark", len(live), -1)
        # pending first, then the index: an object leaves the pending map only after
        # its index commit, so one of the two sees it (unless it is still being written
        # or its write failed: that span's references are covered by the grace periods)
        pending = store.pending_type(oid)
        loc = store.locate(oid)
        kind = loc.type if loc is not None else pending
        if kind != ObjectType.TREE:
            continue
        try:
            entries = decode_tree(store.read_object(oid))
        except StoreError as exc:
            raise CollectionAbortedError(
                f"cannot read tree {oid.hex()} ({exc}); nothing was swept: run dpmsfs verify"
            ) from None
        for entry in entries:
            if entry.type == EntryType.DIR or (entry.type == EntryType.FILE and not trees_only):
                stack.extend(c for c in entry.content if c not in live and c != _UNBUILT)


def _candidates(store: Store, live: set[bytes]) -> dict[bytes, ObjectLocation]:
    """Indexed objects not marked live."""
    return {oid: loc for oid, loc in _scan_objects(store) if oid not in live}


def _sweep(
    store: Store,
    dead: dict[bytes, ObjectLocation],
    live: set[bytes],
    stats: CollectStats,
    progress: Progress = _no_progress,
) -> None:
    ids = list(dead)
    for first in range(0, len(ids), SWEEP_BATCH):
        progress("sweep", first, len(ids))
        batch = ids[first : first + SWEEP_BATCH]
        while True:
            # mark what writers guarded meanwhile (outside the lock: it reads trees)
            fresh = store.guarded_since(live)
            if fresh:
                _mark(store, fresh, live)
                continue
            with store.guard_lock:
                if store.guarded_since(live):
                    continue  # a writer got in between: mark that first
                doomed = [oid for oid in batch if oid not in live]
                removed = store.db.transact(
                    functools.partial(_delete_entries, doomed=doomed, dead=dead)
                )
            break
        stats.dead_objects += removed[0]
        stats.dead_bytes += removed[1]
    progress("sweep", len(ids), len(ids))


def _delete_entries(
    txn: WriteTxn, doomed: list[bytes], dead: dict[bytes, ObjectLocation]
) -> tuple[int, int]:
    totals = Totals.decode(txn.get(schema.T_META, schema.META_TOTALS))
    objects, stored, raw = totals
    count = nbytes = 0
    for oid in doomed:
        value = txn.get(schema.T_OBJECTS, oid)
        if value is None or ObjectLocation.decode(value) != dead[oid]:
            continue  # gone or written again elsewhere meanwhile: not ours to delete
        txn.delete(schema.T_OBJECTS, oid)
        loc = dead[oid]
        objects, stored, raw = objects - 1, stored - loc.stored_length, raw - loc.raw_length
        count += 1
        nbytes += loc.stored_length
    txn.put(schema.T_META, schema.META_TOTALS, Totals(objects, stored, raw).encode())
    return count, nbytes


def _scan_objects(store: Store) -> Iterator[tuple[bytes, ObjectLocation]]:
    """Every index entry, read in batches of short read transactions."""
    start = b""
    while True:
        with store.db.read() as txn:
            batch = []
            for key, value in txn.cursor_range(schema.T_OBJECTS, start=start):
                batch.append((key, ObjectLocation.decode(value)))
                if len(batch) == 10_000:
                    start = key + b"\0"
                    break
        yield from batch
        if len(batch) < 10_000:
            return


def _reclaim_packs(
    store: Store, repack_below: float, stats: CollectStats, progress: Progress = _no_progress
) -> None:
    """Delete packs with no live record; rewrite packs less than ``repack_below`` alive.

    Two passes over the index: per-pack totals first (small), then the entries of the
    sparse packs only, so memory does not grow with the whole index.
    """
    with store.db.read() as txn:
        packs = {k: PackInfo.decode(v) for k, v in txn.cursor_range(schema.T_PACKS)}
    live_bytes: dict[bytes, int] = {}
    for _, loc in _scan_objects(store):
        live_bytes[loc.pack_id] = live_bytes.get(loc.pack_id, 0) + RECORD.size + loc.stored_length
    empty = [p for p in packs if p not in live_bytes]
    if empty:

        def drop(txn: WriteTxn) -> None:
            for pack_id in empty:
                txn.delete(schema.T_PACKS, pack_id)

        store.db.transact(drop)  # the index first, then the files (a crash: garbage)
        for n, pack_id in enumerate(empty):
            progress("packs", n, len(empty))
            stats.reclaimed_bytes += _delete_pack_file(store, pack_id)
            stats.packs_deleted += 1
    sparse = {p for p, info in packs.items() if 0 < live_bytes.get(p, 0) < repack_below * info.size}
    if not sparse:
        return
    entries: dict[bytes, list[tuple[bytes, ObjectLocation]]] = {p: [] for p in sparse}
    for oid, loc in _scan_objects(store):
        if loc.pack_id in sparse:
            entries[loc.pack_id].append((oid, loc))
    # oldest first, several sparse packs into one new pack of up to the store's pack size
    group: list[bytes] = []
    size = 0
    for pack_id in sorted(sparse, key=lambda p: packs[p].sealed_ns):
        group.append(pack_id)
        size += live_bytes[pack_id]
        if size >= store.pack_size:
            _repack(store, group, entries, packs, stats)
            group, size = [], 0
    if group:
        _repack(store, group, entries, packs, stats)


def _repack(
    store: Store,
    old_packs: list[bytes],
    entries: dict[bytes, list[tuple[bytes, ObjectLocation]]],
    packs: dict[bytes, PackInfo],
    stats: CollectStats,
) -> None:
    """Copy the live records of ``old_packs`` into one new pack, move their index entries,
    drop the old packs from the index, and only then delete their files."""
    writer = PackWriter(store.tmp_dir, store.packs_dir, os.urandom(16))
    moved: list[tuple[bytes, ObjectLocation, ObjectLocation]] = []
    try:
        for old in old_packs:
            for oid, loc in entries[old]:
                blob = store.read_blob(loc, oid)
                store.decode_blob(oid, blob, loc.pack_id)  # never copy a damaged record
                offset = writer.append(loc.type, oid, blob, loc.raw_length)
                new = ObjectLocation(writer.pack_id, offset, loc.stored_length, loc.raw_length,
                                     loc.type)  # fmt: skip
                moved.append((oid, loc, new))
        new_info = writer.seal(time.time_ns())
    except BaseException:
        writer.discard()
        raise
    writer.close()

    def commit(txn: WriteTxn) -> None:
        txn.put(schema.T_PACKS, writer.pack_id, new_info.encode())
        for oid, was, now in moved:
            value = txn.get(schema.T_OBJECTS, oid)
            if value is not None and ObjectLocation.decode(value) == was:
                txn.put(schema.T_OBJECTS, oid, now.encode())
        # nothing else can point into the old packs: no writer adds entries to them
        for old in old_packs:
            txn.delete(schema.T_PACKS, old)

    store.db.transact(commit)
    freed = sum(_delete_pack_file(store, old) for old in old_packs)
    stats.packs_repacked += len(old_packs)
    stats.packs_written += 1
    stats.reclaimed_bytes += freed - new_info.size
    log.info("repacked %d packs (%d live records, %d of %d bytes) into %s", len(old_packs),
             len(moved), new_info.size, sum(packs[p].size for p in old_packs),
             writer.pack_id.hex())  # fmt: skip


def _delete_pack_file(store: Store, pack_id: bytes) -> int:
    path = pack_path(store.packs_dir, pack_id)
    try:
        size = os.stat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return 0
    store.drop_pack_handle(pack_id)
    return size


def _remove_garbage(store: Store, stats: CollectStats) -> None:
    """Pack files the index does not name. Under the flush lock: a pack being sealed and
    indexed right now is renamed into place before its index commit."""
    with store.flush_lock:
        with store.db.read() as txn:
            known = {k for k, _ in txn.cursor_range(schema.T_PACKS)}
        for sub in sorted(os.listdir(store.packs_dir)):
            subdir = os.path.join(store.packs_dir, sub)
            if not os.path.isdir(subdir):
                continue
            for name in os.listdir(subdir):
                stem = name.removesuffix(".pack")
                try:
                    pack_id = bytes.fromhex(stem)
                except ValueError:
                    continue
                if name.endswith(".pack") and len(pack_id) == 16 and pack_id not in known:
                    path = os.path.join(subdir, name)
                    stats.reclaimed_bytes += os.stat(path).st_size
                    os.unlink(path)
                    stats.garbage_files += 1
                    log.info("removed garbage pack %s", path)
