"""`verify`: check that a store is consistent, and optionally that every object reads back.

Checks, in read order (the reverse of the write order, see docs/design.md):

1. packs: every ``packs`` entry has its file, of the recorded size, with a valid header
   (naming the same pack id) and a valid footer of the recorded count; pack files that no
   index entry knows are *garbage* (left by a crash between seal and index commit), not
   damage.
2. index: every ``objects`` entry names a known pack and lies within it, and agrees with
   the pack's footer (type, offset, length); the running totals match.  With
   ``read_data`` every indexed object is read, decompressed and hashed.
3. snapshots: every tree reachable from a snapshot is indexed and decodes, and every
   chunk a file names is indexed and not damaged. Of a server-only snapshot (its data
   left under the local budget, store/evicted.py) only the trees are checked: its
   chunks are on the server, and their absence here is by design, not damage.

Damage is reported per object id, with the snapshots and file paths it affects, so an
operator knows what is lost and what a heal from the server must bring back.

Memory stays bounded on a million-object store: the index is scanned in batches with
short read transactions (a long one would stall index map growth in the daemon), footers
are held for one pack at a time, and the tree walk keeps only a dict of tree ids already
seen, with the (normally empty) list of problems under each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dpmsfs.store import evicted, schema
from dpmsfs.store.errors import CorruptObjectError, StoreError
from dpmsfs.store.packs import (
    RECORD,
    FooterEntry,
    PackFormatError,
    pack_path,
    read_footer,
    read_header,
    read_record,
)
from dpmsfs.store.schema import ObjectLocation, PackInfo, Totals
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, decode_tree

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phases "packs", "index", "snapshots"."""

MAX_PATHS_PER_OBJECT = 100
_MAX_DEPTH = 400
_BATCH = 4096


@dataclass
class DamagedObject:
    object_id: bytes
    reason: str
    pack_id: bytes | None = None
    snapshots: set[str] = field(default_factory=set)
    paths: list[str] = field(default_factory=list)  # "SNAPSHOT/dir/file", capped
    more_paths: int = 0  # affected paths beyond the cap


@dataclass
class VerifyReport:
    read_data: bool
    damaged: dict[bytes, DamagedObject] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # damage not tied to one object
    garbage: list[str] = field(default_factory=list)  # unindexed packs: harmless
    packs_checked: int = 0
    objects_checked: int = 0
    bytes_read: int = 0
    snapshots_checked: int = 0
    server_only_snapshots: int = 0  # trees checked, data on the server
    trees_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else "DAMAGED"
        return (
            f"{state}: {self.packs_checked} packs, {self.objects_checked} objects"
            f"{' read' if self.read_data else ''}, {self.snapshots_checked} snapshots"
            + (f" ({self.server_only_snapshots} server-only)" if self.server_only_snapshots else "")
            + f", {self.trees_checked} trees; {len(self.damaged)} damaged objects, "
            f"{len(self.problems)} other problems, {len(self.garbage)} garbage files"
        )

    def _damage(self, oid: bytes, reason: str, pack_id: bytes | None) -> None:
        if oid not in self.damaged:
            log.warning("damaged object %s: %s", oid.hex(), reason)
            self.damaged[oid] = DamagedObject(oid, reason, pack_id)


def verify(store: Store, read_data: bool = False, progress: Progress | None = None) -> VerifyReport:
    """Check ``store``; see the module docstring.  Never modifies the store."""
    report = VerifyReport(read_data=read_data)
    _Verifier(store, report, progress).run()
    log.info("verify %s: %s", store.path, report.summary())
    return report


class _Verifier:
    def __init__(self, store: Store, report: VerifyReport, progress: Progress | None) -> None:
        self.store = store
        self.db = store.db
        self.report = report
        self.progress = progress or (lambda phase, done, total: None)
        self.packs: dict[bytes, PackInfo] = {}
        self.bad_footer: set[bytes] = set()  # indexed packs whose footer is unusable
        self.matched: dict[bytes, int] = {}  # pack -> index entries confirmed by footer

    def run(self) -> None:
        with self.db.read() as txn:
            self.packs = {k: PackInfo.decode(v) for k, v in txn.cursor_range(schema.T_PACKS)}
        self.check_packs()
        self.check_index()
        self.check_snapshots()

    # -- 1. packs -------------------------------------------------------------------------

    def check_packs(self) -> None:
        on_disk: set[bytes] = set()
        for sub in sorted(os.listdir(self.store.packs_dir)):
            subdir = os.path.join(self.store.packs_dir, sub)
            for name in sorted(os.listdir(subdir)) if os.path.isdir(subdir) else ():
                stem = name.removesuffix(".pack")
                try:
                    pack_id = bytes.fromhex(stem)
                except ValueError:
                    pack_id = b""
                well_named = name.endswith(".pack") and len(pack_id) == 16 and sub == stem[:2]
                if well_named and pack_id in self.packs:
                    on_disk.add(pack_id)
                else:
                    self.report.garbage.append(os.path.join(subdir, name))
        for n, (pack_id, info) in enumerate(self.packs.items()):
            self.progress("packs", n, len(self.packs))
            self.report.packs_checked += 1
            if pack_id not in on_disk:
                self.report.problems.append(f"pack {pack_id.hex()} is indexed but missing")
                self.bad_footer.add(pack_id)
                continue
            self.check_pack(pack_id, info)

    def check_pack(self, pack_id: bytes, info: PackInfo) -> None:
        path = pack_path(self.store.packs_dir, pack_id)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            try:
                if size != info.size:
                    raise PackFormatError(f"{path}: {size} bytes, index says {info.size}")
                _, header_id = read_header(fd, path)
                if header_id != pack_id:
                    raise PackFormatError(f"{path}: header names pack {header_id.hex()}")
                entries = read_footer(fd, size, path)
                if len(entries) != info.records:
                    raise PackFormatError(
                        f"{path}: {len(entries)} records, index says {info.records}"
                    )
            except PackFormatError as exc:
                self.report.problems.append(str(exc))
                self.bad_footer.add(pack_id)
                return
            matched = 0
            for start in range(0, len(entries), _BATCH):
                batch = entries[start : start + _BATCH]
                with self.db.read() as txn:
                    locs = [txn.get(schema.T_OBJECTS, e.object_id) for e in batch]
                for entry, value in zip(batch, locs, strict=True):
                    if value is None:
                        continue  # a duplicate copy that lost the race: garbage
                    loc = ObjectLocation.decode(value)
                    if loc.pack_id != pack_id or not _agrees(loc, entry):
                        continue  # counted as a mismatch below if it names this pack
                    matched += 1
                    if self.report.read_data:
                        self.read_and_check(fd, path, entry.object_id, loc)
            self.matched[pack_id] = matched
        finally:
            os.close(fd)

    def read_and_check(self, fd: int, path: str, oid: bytes, loc: ObjectLocation) -> None:
        self.report.objects_checked += 1
        try:
            _, blob = read_record(fd, loc.offset, loc.stored_length, oid, path)
            self.report.bytes_read += len(blob)
            data = self.store.decode_blob(oid, blob, loc.pack_id)
            if len(data) != loc.raw_length:
                raise CorruptObjectError(
                    f"object {oid.hex()}: {len(data)} bytes, index says {loc.raw_length}",
                    oid,
                    loc.pack_id,
                )
        except (PackFormatError, CorruptObjectError) as exc:
            self.report._damage(oid, str(exc), loc.pack_id)

    # -- 2. index -------------------------------------------------------------------------

    def scan_objects(self) -> Iterator[tuple[bytes, ObjectLocation]]:
        """All index entries, in batches of short read transactions."""
        start = b""
        while True:
            with self.db.read() as txn:
                batch = []
                for key, value in txn.cursor_range(schema.T_OBJECTS, start=start):
                    batch.append((key, ObjectLocation.decode(value)))
                    if len(batch) == _BATCH:
                        break
            yield from batch
            if len(batch) < _BATCH:
                return
            start = batch[-1][0] + b"\0"

    def check_index(self) -> None:
        indexed: dict[bytes, int] = {}
        totals = [0, 0, 0]
        fds: dict[bytes, int] = {}
        try:
            for n, (oid, loc) in enumerate(self.scan_objects()):
                if n % 10000 == 0:
                    self.progress("index", n, -1)
                totals[0] += 1
                totals[1] += loc.stored_length
                totals[2] += loc.raw_length
                info = self.packs.get(loc.pack_id)
                if info is None:
                    self.report._damage(oid, f"pack {loc.pack_id.hex()} is not indexed", None)
                    continue
                indexed[loc.pack_id] = indexed.get(loc.pack_id, 0) + 1
                if loc.offset + RECORD.size + loc.stored_length > info.size:
                    self.report._damage(oid, "index entry points past the end of its pack",
                                        loc.pack_id)  # fmt: skip
                    continue
                if loc.pack_id in self.bad_footer:
                    # No footer to vouch for it: look at the record itself.
                    self.check_alone(oid, loc, fds)
            for pack_id, count in indexed.items():
                if pack_id not in self.bad_footer and count != self.matched.get(pack_id, 0):
                    self.find_mismatches(pack_id)
        finally:
            for fd in fds.values():
                os.close(fd)
        with self.db.read() as txn:
            recorded = Totals.decode(txn.get(schema.T_META, schema.META_TOTALS))
        if tuple(recorded) != tuple(totals):
            self.report.problems.append(
                f"index totals {tuple(recorded)} differ from the entries {tuple(totals)}"
            )

    def check_alone(self, oid: bytes, loc: ObjectLocation, fds: dict[bytes, int]) -> None:
        path = pack_path(self.store.packs_dir, loc.pack_id)
        fd = fds.get(loc.pack_id)
        if fd is None:
            try:
                fd = fds[loc.pack_id] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.report._damage(oid, f"pack {loc.pack_id.hex()} is missing", loc.pack_id)
                return
        if self.report.read_data:
            self.read_and_check(fd, path, oid, loc)
            return
        try:
            head = os.pread(fd, RECORD.size, loc.offset)
            if len(head) != RECORD.size:
                raise PackFormatError(f"{path}: record at {loc.offset} is cut short")
            _, rec_id, rec_len = RECORD.unpack(head)
            if rec_id != oid or rec_len != loc.stored_length:
                raise PackFormatError(f"{path}: record at {loc.offset} is another object")
            if os.fstat(fd).st_size < loc.offset + RECORD.size + loc.stored_length:
                raise PackFormatError(f"{path}: record at {loc.offset} is cut short")
        except PackFormatError as exc:
            self.report._damage(oid, str(exc), loc.pack_id)

    def find_mismatches(self, pack_id: bytes) -> None:
        """Rare path: some index entries name this pack but not a footer record."""
        path = pack_path(self.store.packs_dir, pack_id)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            by_offset: dict[int, FooterEntry] = {
                e.offset: e for e in read_footer(fd, os.fstat(fd).st_size, path)
            }
        finally:
            os.close(fd)
        for oid, loc in self.scan_objects():
            if loc.pack_id == pack_id:
                entry = by_offset.get(loc.offset)
                if entry is None or entry.object_id != oid or not _agrees(loc, entry):
                    self.report._damage(oid, "index entry disagrees with the pack footer",
                                        pack_id)  # fmt: skip

    # -- 3. snapshots and trees -----------------------------------------------------------

    def check_snapshots(self) -> None:
        memo: dict[bytes, list[tuple[bytes, bytes]]] = {}
        trees_memo: dict[bytes, list[tuple[bytes, bytes]]] = {}  # server-only snapshots'
        server_only = evicted.evicted_names(self.store)
        for n, record in enumerate(self.store.list_snapshots()):
            self.progress("snapshots", n, -1)
            self.report.snapshots_checked += 1
            local = record.name not in server_only
            if not local:
                self.report.server_only_snapshots += 1
            for path, oid in self.walk(record.root_tree_id, memo if local else trees_memo, 0,
                                       chunks=local):  # fmt: skip
                damaged = self.report.damaged[oid]
                damaged.snapshots.add(record.name)
                if len(damaged.paths) < MAX_PATHS_PER_OBJECT:
                    shown = path.decode("utf-8", "backslashreplace")
                    damaged.paths.append(f"{record.name}/{shown}" if shown else record.name)
                else:
                    damaged.more_paths += 1

    def walk(
        self,
        tree_id: bytes,
        memo: dict[bytes, list[tuple[bytes, bytes]]],
        depth: int,
        chunks: bool = True,
    ) -> list[tuple[bytes, bytes]]:
        """(relative path, damaged id) for everything broken under ``tree_id`` (without
        ``chunks``: in its trees only)."""
        cached = memo.get(tree_id)
        if cached is not None:
            return cached
        problems: list[tuple[bytes, bytes]] = []
        memo[tree_id] = problems  # also guards against a (crafted) cycle
        if depth > _MAX_DEPTH:
            self.report._damage(tree_id, f"trees nested deeper than {_MAX_DEPTH}", None)
            problems.append((b"", tree_id))
            return problems
        if tree_id in self.report.damaged:
            problems.append((b"", tree_id))
            return problems
        try:
            entries = decode_tree(self.store.read_object(tree_id))
        except StoreError as exc:  # missing, corrupt, or not a tree
            loc = self.store.locate(tree_id)
            self.report._damage(tree_id, f"tree: {exc}", loc.pack_id if loc else None)
            problems.append((b"", tree_id))
            return problems
        self.report.trees_checked += 1
        files = [e for e in entries if e.type == EntryType.FILE and e.content and chunks]
        with self.db.read() as txn:
            for e in files:
                for cid in e.content:
                    if cid in self.report.damaged:
                        problems.append((e.name, cid))
                    elif txn.get(schema.T_OBJECTS, cid) is None:
                        self.report._damage(cid, "chunk is not in the index", None)
                        problems.append((e.name, cid))
        for e in entries:
            if e.type == EntryType.DIR:
                for path, oid in self.walk(e.content[0], memo, depth + 1, chunks):
                    problems.append((e.name + b"/" + path if path else e.name, oid))
        return problems


def _agrees(loc: ObjectLocation, entry: FooterEntry) -> bool:
    return (
        loc.offset == entry.offset and loc.stored_length == entry.length and loc.type == entry.type
    )
