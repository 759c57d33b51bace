"""`Store`: the local content-addressed store (packs + LMDB index + snapshot records).

Directory layout::

    STORE/DPMSFS-STORE          marker, written last by `Store.create`
    STORE/lock                  flock'ed exclusively by the one writer
    STORE/index/                LMDB environment (tables in schema.py)
    STORE/packs/<2 hex>/<32 hex>.pack   sealed packs (packs.py)
    STORE/tmp/                  packs being written; leftovers of a crash are removed at open

Write ordering (docs/design.md, "Write ordering and crash consistency"): an object is
appended to an open pack; `flush` seals the pack (fsync, rename, directory fsync) and only
then commits the pack's index entries; a tree is written after the objects it names, and a
snapshot record after its root tree is indexed.  A crash at any instant therefore leaves
at worst garbage (an unindexed pack, a tmp file), never an index entry or snapshot that
points at nothing.

Concurrency: `write_chunk`/`write_object` may be called from several threads.  Hashing and
compression run outside any lock (both release the GIL for large buffers), only the append
to the open pack holds ``_lock``.  ``_flush_lock`` serializes sealing and index commits.

Space reclaim (gc.py) runs beside writers and readers without a global lock; the store's
part of that protocol (docs/design.md, "Prune: reclaiming space beside capture") is the
*guard* (every id passed to `write_object` while a collection runs is recorded before
the dedup check), `references()` (a span in which ids a caller obtained may still be
committed to state: the collector waits for spans older than its mark), and `read_blob`
looking an object up again when a repack moved it and removed its old pack.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import NamedTuple

from chunker import CorruptChunkError, chunk_id, compress_frame_parts, decompress_chunk
from chunker.adaptive import FAST_LEVEL, AdaptiveCompressor
from dpmsfs.store import schema
from dpmsfs.store.db import Database, ReadTxn, WriteTxn
from dpmsfs.store.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)
from dpmsfs.store.packs import (
    DEFAULT_PACK_SIZE,
    PackFormatError,
    PackWriter,
    fsync_dir,
    pack_path,
    read_record,
)
from dpmsfs.store.schema import ObjectLocation, ObjectType, PackInfo, Totals
from dpmsfs.store.snapshots import SnapshotRecord, snapshot_name
from dpmsfs.store.tree import TreeEntry, decode_tree, encode_tree

log = logging.getLogger(__name__)

MARKER = "DPMSFS-STORE"
_MARKER_TEXT = (
    "This directory is a dpmsfs local store (format {version}). Do not edit or copy files\n"
    "in it by hand; use `dpmsfs verify` to check it.\n"
)
_MAX_OPEN_PACKS = 64  # cached read fds
_HANDLE_CHECK_SECONDS = 5.0  # how often cached fds of deleted packs are looked for


class StoreStats(NamedTuple):
    objects: int
    stored_bytes: int
    raw_bytes: int
    packs: int


class _Pending(NamedTuple):
    """An object appended to a pack whose index entries are not committed yet."""

    writer: PackWriter
    loc: ObjectLocation


class _PackGoneError(CorruptObjectError):
    """A pack file named by a location is not there (a repack may have moved it)."""


class _PackHandle:
    """A cached read fd with a use count, so eviction never closes an fd mid-pread."""

    __slots__ = ("evicted", "fd", "path", "users")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.users = 0
        self.evicted = False


class Store:
    """The local store.  Use `Store.create` or `Store.open`; close (or ``with``) when done."""

    def __init__(
        self,
        path: str,
        db: Database,
        lock_fd: int | None,
        *,
        pack_size: int,
        compression_level: int,
        now_ns: Callable[[], int],
    ) -> None:
        self.path = path
        self.db = db
        self.readonly = lock_fd is None
        self.packs_dir = os.path.join(path, "packs")
        self.tmp_dir = os.path.join(path, "tmp")
        self.pack_size = pack_size
        self.compression_level = compression_level
        # chunks of files: level per kind of file, measured (chunker/adaptive.py)
        self.compressor = AdaptiveCompressor(
            fast_level=min(FAST_LEVEL, compression_level), strong_level=compression_level
        )
        self._now_ns = now_ns
        self._lock_fd = lock_fd
        self._lock = threading.Lock()  # open pack, pending map, in-flight ids
        self._flush_lock = threading.Lock()  # sealing + index commits
        self._open: PackWriter | None = None
        self._rotated: list[PackWriter] = []  # full or flushing packs, not yet indexed
        self._pending: dict[bytes, _Pending] = {}
        # ids being compressed and written right now; a second writer of the same id
        # waits on `_written` (rare: one Condition for all, no Event per object)
        self._inflight: set[bytes] = set()
        self._written = threading.Condition(self._lock)
        self._sealer: threading.Thread | None = None
        self._seal_wanted = threading.Event()
        self._stopping = False
        self._handles_lock = threading.Lock()
        self._handles: dict[bytes, _PackHandle] = {}  # insertion order = LRU order
        self._handles_checked = time.monotonic()
        # space reclaim (gc.py): ids used while a collection runs, and reference spans
        self._gc_lock = threading.Lock()
        self._gc_guard: set[bytes] | None = None
        self._spans = threading.Condition()
        self._span_next = 0
        self._spans_open: set[int] = set()
        with db.read() as txn:
            meta = {k: txn.get(schema.T_META, k) for k in (
                schema.META_FORMAT_VERSION, schema.META_STORE_ID, schema.META_CHUNKER_IDENTITY
            )}  # fmt: skip
        raw_version = meta[schema.META_FORMAT_VERSION]
        if raw_version is None:
            raise StoreError(f"{path}: the index has no format version (not a dpmsfs store?)")
        version = schema.decode_u32(raw_version)
        if version != schema.FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format version {version} is not supported "
                f"(this dpmsfs reads version {schema.FORMAT_VERSION})"
            )
        self.store_id = (meta[schema.META_STORE_ID] or b"").decode()
        self.chunker_identity = (meta[schema.META_CHUNKER_IDENTITY] or b"").decode()

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str,
        chunker_identity: str,
        store_id: str | None = None,
        *,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
        map_size: int = 64 << 20,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> Store:
        """Create a new store in ``path`` (absent or an empty directory) and open it."""
        if not chunker_identity:
            raise StoreError("a store needs the chunker identity it is created for")
        os.makedirs(path, exist_ok=True)
        if os.listdir(path):
            raise StoreError(f"{path} is not empty: refusing to create a store there")
        for sub in ("index", "packs", "tmp"):
            os.mkdir(os.path.join(path, sub))
        lock_fd = _lock(path)
        try:
            db = Database(os.path.join(path, "index"), schema.ALL_TABLES, map_size=map_size)

            def init(txn: WriteTxn) -> None:
                txn.put(schema.T_META, schema.META_FORMAT_VERSION,
                        schema.encode_u32(schema.FORMAT_VERSION))  # fmt: skip
                txn.put(schema.T_META, schema.META_STORE_ID,
                        (store_id or os.urandom(16).hex()).encode())  # fmt: skip
                txn.put(schema.T_META, schema.META_CHUNKER_IDENTITY, chunker_identity.encode())
                txn.put(schema.T_META, schema.META_CREATED_NS, schema.encode_i64(now_ns()))
                txn.put(schema.T_META, schema.META_TOTALS, Totals().encode())

            db.transact(init)
            marker = os.path.join(path, MARKER)
            with open(marker + ".tmp", "w") as f:
                f.write(_MARKER_TEXT.format(version=schema.FORMAT_VERSION))
                f.flush()
                os.fsync(f.fileno())
            os.rename(marker + ".tmp", marker)
            fsync_dir(path)
        except BaseException:
            os.close(lock_fd)
            raise
        log.info("created store %s (chunker %s)", path, chunker_identity)
        return cls(path, db, lock_fd, pack_size=pack_size,
                   compression_level=compression_level, now_ns=now_ns)  # fmt: skip

    @classmethod
    def open(
        cls,
        path: str,
        chunker_identity: str | None = None,
        *,
        readonly: bool = False,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> Store:
        """Open an existing store.

        Refuses a directory that is not a store, an unknown format version, and (when
        ``chunker_identity`` is given) a store made with another chunker: mixing chunk
        identities would silently stop deduplication.  Writers take an exclusive lock
        (`StoreLockedError` if held); ``readonly`` openers take none.
        """
        if not os.path.isfile(os.path.join(path, MARKER)) or not os.path.isdir(
            os.path.join(path, "index")
        ):
            raise StoreError(f"{path} is not a dpmsfs store")
        lock_fd = None if readonly else _lock(path)
        try:
            db = Database(os.path.join(path, "index"), schema.ALL_TABLES, readonly=readonly)
            try:
                store = cls(path, db, lock_fd, pack_size=pack_size,
                            compression_level=compression_level, now_ns=now_ns)  # fmt: skip
            except BaseException:
                db.close()
                raise
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if chunker_identity is not None and chunker_identity != store.chunker_identity:
            store.close()
            raise StoreError(
                f"{path} was made with chunker {store.chunker_identity!r}, not "
                f"{chunker_identity!r}: refusing to mix chunk identities"
            )
        if not readonly:
            store._remove_tmp_leftovers()
        return store

    def _remove_tmp_leftovers(self) -> None:
        """Unsealed packs of a crashed run: never indexed, so plain garbage."""
        for name in os.listdir(self.tmp_dir):
            log.info("removing unsealed pack %s left by an earlier run", name)
            os.unlink(os.path.join(self.tmp_dir, name))

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self.readonly:
            self.flush()
        self.close()

    def close(self) -> None:
        """Release everything.  Unflushed objects are dropped (they were never durable)."""
        sealer = self._sealer
        if sealer is not None:
            self._stopping = True
            self._seal_wanted.set()
            sealer.join()
        with self._lock:
            writers = ([self._open] if self._open else []) + self._rotated
            if self._pending:
                log.warning("closing store %s with %d unflushed objects dropped",
                            self.path, len(self._pending))  # fmt: skip
            for w in writers:
                w.discard()
            self._open, self._rotated, self._pending = None, [], {}
        with self._handles_lock:
            for handle in self._handles.values():
                os.close(handle.fd)
            self._handles.clear()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing --------------------------------------------------------------------------

    def write_chunk(
        self,
        data: bytes | memoryview,
        kind: bytes | None = None,
        dense: Callable[[int], bool] | None = None,
    ) -> tuple[bytes, bool]:
        """Store a chunk of file content; return (id, whether it was new).

        ``kind`` (the file's extension, `chunker.adaptive.kind_of`) lets the store pick
        the compression level that pays for that kind of file; None: the store's level.
        ``dense(n)`` is asked, only when the chunk is new, whether there is time to compress
        its ``n`` bytes harder (`chunker.adaptive.DENSE_LEVEL`).
        """
        return self.write_object(ObjectType.CHUNK, data, kind, dense)

    def write_tree(self, entries: Iterable[TreeEntry]) -> tuple[bytes, bool]:
        return self.write_object(ObjectType.TREE, encode_tree(entries))

    def write_object(
        self,
        kind: ObjectType,
        data: bytes | memoryview,
        file_kind: bytes | None = None,
        dense: Callable[[int], bool] | None = None,
    ) -> tuple[bytes, bool]:
        """Store an object unless one with the same id is indexed or pending (dedup).

        Thread-safe.  Two threads storing the same new id: one writes, the other waits for
        it (so nobody returns an id that might still fail to be written).
        """
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        if len(data) >= 1 << 32:
            raise StoreError("objects are limited to 4 GiB")
        oid = chunk_id(data)
        if self._gc_guard is not None:
            self.guard(oid)  # before the dedup check below: see gc.py
        with self._lock:
            while oid in self._inflight:
                self._written.wait()
            if oid in self._pending:
                return oid, False
            self._inflight.add(oid)
        full: PackWriter | None = None
        try:
            # Pending entries leave the map only after their index commit, so an id is
            # always either pending or indexed once written: this check cannot miss one.
            with self.db.read() as txn:
                if txn.get(schema.T_OBJECTS, oid) is not None:
                    return oid, False
            if file_kind is None:
                frame = compress_frame_parts(data, self.compression_level)
            else:
                harder = dense is not None and dense(len(data))
                frame = self.compressor.compress(file_kind, data, dense=harder)
            stored = len(frame[0]) + len(frame[1])
            with self._lock:
                writer = self._open
                if writer is None:
                    writer = self._open = PackWriter(self.tmp_dir, self.packs_dir, os.urandom(16))
                offset = writer.append(int(kind), oid, frame, len(data))
                self._pending[oid] = _Pending(
                    writer, ObjectLocation(writer.pack_id, offset, stored, len(data), kind)
                )
                if writer.size >= self.pack_size:
                    self._open = None
                    self._rotated.append(writer)
                    full = writer
        finally:
            with self._lock:
                self._inflight.discard(oid)
                self._written.notify_all()
        if full is not None:
            self._start_sealer()
            self._seal_wanted.set()
        return oid, True

    def _start_sealer(self) -> None:
        """Full packs are sealed (fsync) and indexed by a background thread, so the
        threads writing objects never wait for the disk; `flush()` still waits for all."""
        with self._lock:
            if self._sealer is not None:
                return
            self._sealer = threading.Thread(target=self._seal_loop, name="pack-sealer", daemon=True)
            self._sealer.start()

    def _seal_loop(self) -> None:
        while True:
            self._seal_wanted.wait()
            self._seal_wanted.clear()
            if self._stopping:
                return
            try:
                self._seal_and_index(include_open=False)
            except StoreFullError as exc:
                # The objects are safely appended; the next flush retries the seal.
                log.warning("could not seal a full pack yet: %s", exc)
            except Exception:
                log.exception("sealing a full pack failed; the next flush retries")

    def flush(self) -> None:
        """The durability point: seal open packs, then commit their index entries.

        When it returns, every object written before the call is durable and indexed.
        Raises `StoreFullError` (and can simply be called again later) if the disk is full.
        """
        if not self.readonly:
            self._seal_and_index(include_open=True)

    def _seal_and_index(self, include_open: bool) -> None:
        with self._flush_lock:
            with self._lock:
                if include_open and self._open is not None:
                    self._rotated.append(self._open)
                    self._open = None
                batch = list(self._rotated)
            if not batch:
                return
            for writer in batch:
                if not writer.sealed:
                    writer.seal(self._now_ns())  # packs are durable before the index
            self.db.transact(lambda txn: self._index_packs(txn, batch))
            with self._lock:
                for writer in batch:
                    self._rotated.remove(writer)
                    for entry in writer.entries:
                        pending = self._pending.get(entry.object_id)
                        if pending is not None and pending.writer is writer:
                            del self._pending[entry.object_id]
                    writer.close()
            log.debug("indexed %d packs", len(batch))

    @staticmethod
    def _index_packs(txn: WriteTxn, batch: list[PackWriter]) -> None:
        totals = Totals.decode(txn.get(schema.T_META, schema.META_TOTALS))
        objects, stored, raw = totals
        for writer in batch:
            assert writer.info is not None
            txn.put(schema.T_PACKS, writer.pack_id, writer.info.encode())
            for entry, raw_length in zip(writer.entries, writer.raw_lengths, strict=True):
                loc = ObjectLocation(writer.pack_id, entry.offset, entry.length, raw_length,
                                     entry.type)  # fmt: skip
                # An index entry never changes once written; a second copy (two writers
                # racing past the dedup check) stays unreferenced garbage in its pack.
                if txn.put(schema.T_OBJECTS, entry.object_id, loc.encode(), overwrite=False):
                    objects += 1
                    stored += entry.length
                    raw += raw_length
        txn.put(schema.T_META, schema.META_TOTALS, Totals(objects, stored, raw).encode())

    # -- reading --------------------------------------------------------------------------

    def has_object(self, oid: bytes) -> bool:
        with self._lock:
            if oid in self._pending:
                return True
        with self.db.read() as txn:
            return txn.get(schema.T_OBJECTS, oid) is not None

    def pending_type(self, oid: bytes) -> int | None:
        """The type of an object written but not yet indexed (None if not pending)."""
        with self._lock:
            pending = self._pending.get(oid)
        return None if pending is None else pending.loc.type

    def is_indexed(self, oid: bytes) -> bool:
        """Whether ``oid`` is durable (indexed), as opposed to only pending."""
        with self.db.read() as txn:
            return txn.get(schema.T_OBJECTS, oid) is not None

    def locate(self, oid: bytes, txn: ReadTxn | None = None) -> ObjectLocation | None:
        if txn is None:
            with self.db.read() as own:
                value = own.get(schema.T_OBJECTS, oid)
        else:
            value = txn.get(schema.T_OBJECTS, oid)
        return None if value is None else ObjectLocation.decode(value)

    def read_object(self, oid: bytes) -> bytes:
        """Return an object's bytes, checked against its id (`CorruptObjectError` if not)."""
        blob: bytes | memoryview | None = None
        pack_id: bytes | None = None
        with self._lock:
            pending = self._pending.get(oid)
            if pending is not None:
                # pread under the lock: the writer's fd is closed under the same lock.
                pack_id = pending.writer.pack_id
                try:
                    _, blob = pending.writer.read(pending.loc.offset,
                                                  pending.loc.stored_length, oid)  # fmt: skip
                except PackFormatError as exc:
                    raise CorruptObjectError(str(exc), oid, pack_id) from None
        if blob is None:
            loc = self.locate(oid)
            if loc is None:
                raise ObjectNotFoundError(f"object {oid.hex()} is not in the store")
            pack_id = loc.pack_id
            blob = self.read_blob(loc, oid)
        return self.decode_blob(oid, blob, pack_id)

    def read_blob(self, loc: ObjectLocation, oid: bytes) -> memoryview:
        """The stored (compressed) payload of an indexed object.

        A location can be stale: a repack (gc.py) commits the object's new place before
        it deletes the old pack, so a pack that is gone means "look it up again" (an
        fd opened before the deletion keeps reading the old file, which is also fine).
        """
        for _ in range(8):
            try:
                handle = self._acquire(loc.pack_id)
            except _PackGoneError:
                moved = self.locate(oid)
                if moved is None or moved.pack_id == loc.pack_id:
                    raise
                loc = moved
                continue
            try:
                _, blob = read_record(handle.fd, loc.offset, loc.stored_length, oid, handle.path)
            except PackFormatError as exc:
                raise CorruptObjectError(str(exc), oid, loc.pack_id) from None
            finally:
                self._release(handle)
            return blob
        raise CorruptObjectError(f"object {oid.hex()} keeps moving between packs", oid, None)

    @staticmethod
    def decode_blob(oid: bytes, blob: bytes | memoryview, pack_id: bytes | None) -> bytes:
        where = f" in pack {pack_id.hex()}" if pack_id else ""
        try:
            data = decompress_chunk(blob)
        except CorruptChunkError as exc:
            raise CorruptObjectError(
                f"object {oid.hex()}{where} does not decompress: {exc}", oid, pack_id
            ) from None
        if chunk_id(data) != oid:
            raise CorruptObjectError(
                f"object {oid.hex()}{where} is corrupt (content does not match its id)",
                oid,
                pack_id,
            )
        return data

    def read_tree(self, tree_id: bytes) -> list[TreeEntry]:
        return decode_tree(self.read_object(tree_id))

    def _acquire(self, pack_id: bytes) -> _PackHandle:
        with self._handles_lock:
            if time.monotonic() - self._handles_checked > _HANDLE_CHECK_SECONDS:
                self._close_deleted_handles()
            handle = self._handles.pop(pack_id, None)
            if handle is None:
                path = pack_path(self.packs_dir, pack_id)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise _PackGoneError(
                        f"pack {pack_id.hex()} is missing ({path})", b"", pack_id
                    ) from None
                handle = _PackHandle(fd, path)
                if len(self._handles) >= _MAX_OPEN_PACKS:
                    oldest = next(iter(self._handles))
                    victim = self._handles.pop(oldest)
                    victim.evicted = True
                    if victim.users == 0:
                        os.close(victim.fd)
            self._handles[pack_id] = handle  # most recently used goes last
            handle.users += 1
            return handle

    def _close_deleted_handles(self) -> None:
        """Close cached fds of packs a prune (maybe in another process: the daemon, for
        the snapshot view) deleted, so their disk space is freed; called every few
        seconds from `_acquire` with the handles lock held (one fstat per cached fd)."""
        self._handles_checked = time.monotonic()
        for pack_id, handle in list(self._handles.items()):
            try:
                deleted = os.fstat(handle.fd).st_nlink == 0
            except OSError:
                deleted = True
            if deleted:
                del self._handles[pack_id]
                handle.evicted = True
                if handle.users == 0:
                    os.close(handle.fd)

    def _release(self, handle: _PackHandle) -> None:
        with self._handles_lock:
            handle.users -= 1
            if handle.evicted and handle.users == 0:
                os.close(handle.fd)

    def drop_pack_handle(self, pack_id: bytes) -> None:
        """Close the cached fd of a deleted pack (once no read uses it), so its disk
        space is freed now rather than when the cache would evict it."""
        with self._handles_lock:
            handle = self._handles.pop(pack_id, None)
            if handle is not None:
                handle.evicted = True
                if handle.users == 0:
                    os.close(handle.fd)

    # -- the store's part of space reclaim (gc.py; docs/design.md "Prune") --------------

    def start_guard(self) -> None:
        """From now on record every id passed to `write_object` (dedup hits included)."""
        with self._gc_lock:
            if self._gc_guard is not None:
                raise StoreError("a collection is already running on this store")
            self._gc_guard = set()

    def stop_guard(self) -> None:
        with self._gc_lock:
            self._gc_guard = None

    def guard(self, oid: bytes) -> None:
        """Record that ``oid`` is in use (a caller will refer to it): never swept."""
        with self._gc_lock:
            if self._gc_guard is not None:
                self._gc_guard.add(oid)

    def guarded_since(self, seen: set[bytes]) -> set[bytes]:
        """Ids guarded that are not in ``seen`` (call with `guard_lock` held to decide)."""
        guard = self._gc_guard
        return set() if guard is None else guard - seen

    @property
    def flush_lock(self) -> threading.Lock:
        """Held while packs are sealed and indexed: a pack file renamed into place but
        not yet indexed exists only while it is held (gc.py's garbage pass takes it)."""
        return self._flush_lock

    @property
    def guard_lock(self) -> threading.Lock:
        """Held by the collector while it commits a sweep: a writer recording an id
        either does so before (the sweep sees it) or after (its dedup check then sees
        the id gone and writes it again)."""
        return self._gc_lock

    @contextmanager
    def references(self) -> Iterator[None]:
        """A span in which the caller may obtain ids (written, deduplicated or read from
        state) and commit references to them later: the engine wraps an ingest batch and
        a snapshot in one. A collection waits for spans older than its mark."""
        with self._spans:
            token = self._span_next
            self._span_next += 1
            self._spans_open.add(token)
        try:
            yield
        finally:
            with self._spans:
                self._spans_open.discard(token)
                self._spans.notify_all()

    def wait_for_references(self, timeout: float | None = None) -> bool:
        """Wait until every span open now has ended (newer spans do not count)."""
        with self._spans:
            started = set(self._spans_open)
            return self._spans.wait_for(lambda: not (started & self._spans_open), timeout)

    # -- snapshots ------------------------------------------------------------------------

    def new_snapshot_name(self, time_utc_ns: int) -> str:
        """A unique, chronologically sorting name for a snapshot taken at ``time_utc_ns``."""
        with self.db.read() as txn:
            return snapshot_name(
                time_utc_ns, lambda n: txn.get(schema.T_SNAPSHOTS, n.encode()) is not None
            )

    def add_snapshot(self, record: SnapshotRecord) -> None:
        """Record a snapshot.  Its root tree must already be flushed (indexed)."""

        def body(txn: WriteTxn) -> None:
            if txn.get(schema.T_OBJECTS, record.root_tree_id) is None:
                raise StoreError(
                    f"snapshot {record.name}: root tree {record.root_tree_id.hex()} is not "
                    "flushed; flush() before add_snapshot()"
                )
            if not txn.put(schema.T_SNAPSHOTS, record.name.encode(), record.encode(),
                           overwrite=False):  # fmt: skip
                raise StoreError(f"snapshot {record.name} already exists")

        self.db.transact(body)
        log.info("snapshot %s recorded (root %s)", record.name, record.root_tree_id.hex())

    def get_snapshot(self, name: str) -> SnapshotRecord | None:
        with self.db.read() as txn:
            value = txn.get(schema.T_SNAPSHOTS, name.encode())
        return None if value is None else SnapshotRecord.decode(value)

    def latest_snapshot(self) -> SnapshotRecord | None:
        """The last snapshot in name order, as `list_snapshots` ends (one cursor step:
        `latest` no longer reads every record, which from a cold cache cost disk reads)."""
        with self.db.read() as txn:
            for _, value in txn.cursor_range(schema.T_SNAPSHOTS, reverse=True):
                return SnapshotRecord.decode(value)
        return None

    def list_snapshots(self) -> Iterator[SnapshotRecord]:
        """All snapshots, oldest first; read in batches so no transaction stays open long."""
        start = b""
        while True:
            with self.db.read() as txn:
                batch = []
                for key, value in txn.cursor_range(schema.T_SNAPSHOTS, start=start):
                    batch.append(value)
                    if len(batch) == 256:
                        start = key + b"\0"
                        break
            for value in batch:
                yield SnapshotRecord.decode(value)
            if len(batch) < 256:
                return

    # -- reporting ------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        with self.db.read() as txn:
            totals = Totals.decode(txn.get(schema.T_META, schema.META_TOTALS))
            packs = txn.count(schema.T_PACKS)
        return StoreStats(totals.objects, totals.stored_bytes, totals.raw_bytes, packs)

    def pack_info(self, txn: ReadTxn, pack_id: bytes) -> PackInfo | None:
        value = txn.get(schema.T_PACKS, pack_id)
        return None if value is None else PackInfo.decode(value)


def _lock(path: str) -> int:
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{path} is already open for writing by another process") from None
    return fd
