"""The server's v2 store on disk (no HTTP here): shared blob pool, per-namespace maps, refs.

Layout under the data directory DIR (contract in docs/remote-api.md):

    DIR/server_id                              uuid hex, written once at first start
    DIR/tmp/<random>.tmp                       in-flight uploads; emptied at start-up
    DIR/pool/<d[0:2]>/<d[2:4]>/<digest>        one blob per plain content (see pool)
    DIR/ns/<namespace>/index.sqlite            id -> digest map (see nsindex)
    DIR/ns/<namespace>/refs/<hex(name)>        one record per ref (see objfile)
    DIR/quarantine/pool/<digest>.<ns-time>     blobs found corrupt
    DIR/quarantine/<namespace>/ref-<name>.<ns-time>

Durable before acknowledged: a blob is fsynced and its directory fsynced before any mapping
to it is committed, and mappings are committed (SQLite WAL, synchronous=FULL) before the
HTTP answer. A crash between the two leaves an unmapped blob: harmless (a later upload or a
claim by digest uses it) and reclaimable by a prune. Check-then-write sequences on one blob
or ref run under striped locks; one server process per DIR (the scrubber may run beside it:
it only moves corrupt files aside).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from remote import names, objfile
from remote.backend import BAD_FRAME, CREATED, EXISTS, HASH_MISMATCH
from remote.frames import BadFrameError, inspect_frame, is_digest
from remote.nsindex import TOUCH_RESOLUTION_S, NamespaceIndex
from remote.objfile import fsync_dir
from remote.pool import BlobInfo, BlobPool, CorruptBlob, sync_file

log = logging.getLogger(__name__)

_LOCK_STRIPES = 64
# fsyncs of one batch run in parallel: ext4 and NTFS fold concurrent flushes into fewer
# journal commits (measured: ~2-3 ms per 1 MiB blob instead of 7-10 ms one after the other)
_SYNC_THREADS = 8
# A damaged-list cursor trails the clock by this much (DiskStore.damaged_since).
DAMAGED_SETTLE_NS = 10_000_000_000


@dataclass(frozen=True)
class Stats:
    objects: int
    bytes: int
    refs: int


@dataclass(frozen=True)
class StoredRef:
    namespace_dir: str
    name: str
    path: Path


@dataclass(frozen=True)
class Accepted:
    """The outcome of one upload record: its status, the mapping to commit, if any, and the
    staged (written, not yet fsynced or visible) temp blob, if a new blob is needed."""

    status: str
    row: tuple[str, str, int] | None = None
    staged: Path | None = None
    used: str = ""  # the digest registered with BlobUses until commit or discard
    # the existing mapping an EXISTS answer relied on: commit confirms it (re-maps if pruned)
    known: tuple[str, str, int] | None = None


class BlobUses:
    """Which blobs a request may be about to map, so an online blob sweep spares them.

    A claim by digest (`missing`) or an upload (`accept` .. `commit`) calls `begin(digest)`
    *before* it checks that the blob exists, and `end` after its mapping is committed (or
    dropped). While a sweep is open (`open_sweep` .. `close_sweep`) every digest that was
    begun or ended is also remembered. The sweep deletes a blob only inside `deleting`,
    which holds the same lock and refuses a digest in use or remembered. So for a blob the
    sweep deletes: a mapping made before the sweep opened is in the sweep's mapped set; a
    request in flight is in use; one that began later finds the blob gone when it checks.
    No mapping can name a deleted blob (the argument in full: docs/design.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: dict[str, int] = {}
        self._seen: set[str] | None = None

    def begin(self, digest: str) -> None:
        with self._lock:
            self._in_use[digest] = self._in_use.get(digest, 0) + 1
            if self._seen is not None:
                self._seen.add(digest)

    def end(self, digests: Sequence[str]) -> None:
        with self._lock:
            for digest in digests:
                left = self._in_use.get(digest, 0) - 1
                if left > 0:
                    self._in_use[digest] = left
                else:
                    self._in_use.pop(digest, None)
                if self._seen is not None:
                    self._seen.add(digest)

    def open_sweep(self) -> None:
        """Start remembering; call before the sweep reads which digests are mapped."""
        with self._lock:
            self._seen = set()

    def close_sweep(self) -> None:
        with self._lock:
            self._seen = None

    def delete_if_unused(self, digest: str, delete: Callable[[], None]) -> bool:
        """Run `delete` unless `digest` is in use or was used since the sweep opened."""
        with self._lock:
            if digest in self._in_use or (self._seen is not None and digest in self._seen):
                return False
            delete()
            return True


class DiskStore:
    """Pool, maps and refs of every namespace under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.ns_root = root / "ns"
        self.quarantine_dir = root / "quarantine"
        self.pool = BlobPool(root / "pool", self.tmp_dir, self.quarantine_dir)
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._indexes: dict[str, NamespaceIndex] = {}
        self._indexes_lock = threading.Lock()
        self._server_id = ""
        self._syncer = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="fsync")
        self.uses = BlobUses()
        # how stale a `touched` entry may get before a confirmation rewrites it; an online
        # prune's grace must exceed it plus a tool's longest sync pass (docs/design.md)
        self.touch_resolution_s = TOUCH_RESOLUTION_S

    def prepare(self) -> None:
        """Create the directories, the server id, and drop temp files left by a crash."""
        for d in (self.tmp_dir, self.ns_root, self.quarantine_dir, self.pool.root):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            log.info("removing temp file left by an interrupted upload: %s", leftover.name)
            try:
                leftover.unlink()
            except OSError as exc:
                log.warning("could not remove %s: %s", leftover, exc)
        id_file = self.root / "server_id"
        if not id_file.exists():
            tmp = self.tmp_dir / "server_id.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write(uuid.uuid4().hex + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, id_file)
            fsync_dir(self.root)
        self._server_id = id_file.read_text(encoding="ascii").strip()

    @property
    def server_id(self) -> str:
        if not self._server_id:
            self._server_id = (self.root / "server_id").read_text(encoding="ascii").strip()
        return self._server_id

    def close(self) -> None:
        self._syncer.shutdown(wait=True)
        with self._indexes_lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()

    # -- paths and handles ---------------------------------------------------------------

    def _ns(self, namespace: str) -> Path:
        return self.ns_root / names.namespace_dir(namespace)

    def index(self, namespace: str) -> NamespaceIndex:
        key = names.namespace_dir(namespace)
        with self._indexes_lock:
            index = self._indexes.get(key)
            if index is None:
                index = NamespaceIndex(self.ns_root / key / "index.sqlite")
                index.touch_resolution_s = self.touch_resolution_s
                self._indexes[key] = index
            return index

    def has_namespace(self, namespace: str) -> bool:
        return self._ns(namespace).is_dir()

    def namespaces(self) -> list[str]:
        if not self.ns_root.is_dir():
            return []
        return sorted(n for n in os.listdir(self.ns_root) if names.is_namespace(n))

    def ref_path(self, namespace: str, name: str) -> Path:
        return self._ns(namespace) / "refs" / names.ref_filename(name)

    def _lock(self, name: str) -> threading.Lock:
        return self._locks[zlib.crc32(name.encode()) % _LOCK_STRIPES]

    # -- blobs ---------------------------------------------------------------------------

    def intact_blob(self, digest: str) -> tuple[BlobInfo, bytes] | None:
        """Blob `digest` fully re-checked, or None if absent or corrupt (then quarantined)."""
        try:
            return self.pool.check(digest)
        except FileNotFoundError:
            return None
        except CorruptBlob as exc:
            with self._lock(digest):
                self.pool.quarantine(digest, str(exc))
            return None

    # -- objects -------------------------------------------------------------------------

    def missing(self, namespace: str, objects: Sequence[tuple[str, str | None]]) -> list[str]:
        """Ids the server needs bytes for; claims by digest durably before returning."""
        index = self.index(namespace)
        mapped = index.lookup([id for id, _ in objects])
        claims: list[tuple[str, str, int]] = []
        present: list[str] = []
        out: list[str] = []
        claimed: list[str] = []  # digests this call may map: a blob sweep spares them
        try:
            for id, digest in objects:
                have = mapped.get(id)
                if have is not None and self.intact_blob(have) is not None:
                    present.append(id)
                    continue
                if digest is not None:
                    self.uses.begin(digest)
                    claimed.append(digest)
                    found = self.intact_blob(digest)
                    if found is not None and found[0].xxh3 == id:
                        claims.append((id, digest, found[0].frame_size))
                        mapped[id] = digest
                        continue
                out.append(id)
            if claims:
                # The blob may have been published by an upload still syncing its directory.
                self._sync_all(fsync_dir, {self.pool.path(d).parent for _, d, _ in claims})
                index.add_many(claims)
        finally:
            self.uses.end(claimed)
        # "present" must stay true until the tool's snapshot ref lands: prune keeps what
        # was confirmed within its grace period (nsindex.touched)
        return out + self._confirm(index, present)

    def _confirm(self, index: NamespaceIndex, ids: list[str]) -> list[str]:
        """Touch `ids` (mapped a moment ago), then those an online prune deleted between
        the lookup and the touch: once touched, no prune within its grace deletes them."""
        index.touch(ids)
        if not ids:
            return []
        still = index.lookup(ids)
        return [i for i in ids if i not in still]

    def accept(self, namespace: str, id: str, digest: str, frame: bytes) -> Accepted:
        """Verify one upload record and stage its blob if the pool needs it.

        Nothing is durable or visible yet: `commit` makes the staged blobs of a batch
        durable (parallel fsyncs), publishes them and commits the mappings, in that order.
        """
        try:
            found = inspect_frame(frame)
        except BadFrameError:
            return Accepted(BAD_FRAME)
        if found.id != id or found.sha256 != digest:
            return Accepted(HASH_MISMATCH)
        # from here until commit or discard the blob sweep spares `digest` (BlobUses)
        self.uses.begin(digest)
        try:
            return self._accept(namespace, id, digest, frame)
        except BaseException:
            self.uses.end([digest])
            raise

    def _accept(self, namespace: str, id: str, digest: str, frame: bytes) -> Accepted:
        mapped = self.index(namespace).get(id)
        if mapped is not None and mapped != digest and self.intact_blob(mapped) is not None:
            return Accepted(EXISTS, used=digest)  # the first verified mapping of an id wins
        if self.intact_blob(digest) is not None:
            if mapped == digest:
                return Accepted(EXISTS, used=digest, known=(id, digest, len(frame)))
            return Accepted(CREATED, (id, digest, len(frame)), used=digest)
        tmp = self.pool.write_temp(digest, id, frame, sync=False)
        return Accepted(CREATED, (id, digest, len(frame)), tmp, used=digest)

    def commit(self, namespace: str, accepted: Sequence[Accepted]) -> None:
        """Make a batch durable: fsync staged blobs, publish them, fsync their directories,
        then commit the mappings (one transaction). Staged files are removed on failure."""
        staged = {a.staged: a.row[1] for a in accepted if a.staged is not None and a.row}
        try:
            self._sync_all(sync_file, set(staged))
            dirs: set[Path] = set()
            for tmp, digest in staged.items():
                with self._lock(digest):
                    if self.intact_blob(digest) is not None:
                        _discard(tmp)  # another upload of this content won meanwhile
                    else:
                        dirs.add(self.pool.publish(tmp, digest))
            self._sync_all(fsync_dir, dirs)
            index = self.index(namespace)
            known = [a.known for a in accepted if a.known is not None]
            index.add_many([a.row for a in accepted if a.row is not None])
            # an "exists" answer must stay true like a "present" one (see _confirm)
            vanished = set(self._confirm(index, [row[0] for row in known]))
            index.add_many([row for row in known if row[0] in vanished])
        except BaseException:
            for tmp in staged:
                _discard(tmp)
            raise  # the caller's `discard` ends the blob uses
        self.uses.end([a.used for a in accepted if a.used])

    def discard(self, accepted: Sequence[Accepted]) -> None:
        """Drop the staged blobs of a batch that will not be committed."""
        for a in accepted:
            if a.staged is not None:
                _discard(a.staged)
        self.uses.end([a.used for a in accepted if a.used])

    def _sync_all(self, fn: Callable[[Path], None], paths: set[Path]) -> None:
        if len(paths) <= 1:
            for path in paths:
                fn(path)
            return
        for future in [self._syncer.submit(fn, p) for p in sorted(paths)]:
            future.result()

    def read_object(self, namespace: str, id: str) -> tuple[bytes, str] | None:
        """(frame, digest) of a mapped, intact object; None if unmapped or corrupt."""
        digest = self.index(namespace).get(id)
        if digest is None:
            return None
        found = self.intact_blob(digest)
        if found is None:
            return None
        return found[1], digest

    def objects_for_sending(
        self, namespace: str, ids: Sequence[str]
    ) -> list[tuple[str, bytes, str] | None]:
        """For a download: (id, frame, digest) of each id, None where unmapped or failing
        the cheap checks (`BlobPool.read_for_sending`; such a blob is quarantined).

        No decode and no hashing: the client checks every frame against its id
        (docs/design.md, "What the server checks when it sends"). One index lookup for
        all of `ids`.
        """
        mapped = self.index(namespace).lookup(list(ids))
        out: list[tuple[str, bytes, str] | None] = []
        for id in ids:
            digest = mapped.get(id)
            if digest is None:
                out.append(None)
                continue
            try:
                info, frame = self.pool.read_for_sending(digest)
            except FileNotFoundError:
                out.append(None)
                continue
            except CorruptBlob as exc:
                with self._lock(digest):
                    self.pool.quarantine(digest, str(exc))
                out.append(None)
                continue
            if info.xxh3 != id:  # the header's verified statement names another content
                out.append(None)
                continue
            out.append((id, frame, digest))
        return out

    def suspect(self, namespace: str, ids: Sequence[str]) -> list[str]:
        """A client says these ids downloaded damaged: re-check their blobs in full (and
        quarantine the damaged ones). Returns the ids whose blob is damaged or gone.

        Only the full check decides, so a client cannot make the server drop a sound blob.
        """
        mapped = self.index(namespace).lookup(list(ids))
        return [id for id in ids if id in mapped and self.intact_blob(mapped[id]) is None]

    def damaged_since(self, namespace: str, after_ns: int) -> tuple[list[str], int]:
        """(ids, cursor): ids of `namespace` mapped to a blob quarantined after `after_ns`
        (the quarantine file's time stamp, `<digest>.<time_ns>`), and the cursor to ask
        with next. The cursor stays DAMAGED_SETTLE_NS behind the clock, so a quarantine
        that was being renamed while this listed the directory is reported next time (an
        id reported twice costs one upload answered "exists")."""
        qdir = self.quarantine_dir / "pool"
        digests: set[str] = set()
        try:
            entries = os.listdir(qdir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            digest, _, stamp = name.partition(".")
            if is_digest(digest) and stamp.isdigit() and int(stamp) > after_ns:
                digests.add(digest)
        cursor = max(after_ns, time.time_ns() - DAMAGED_SETTLE_NS)
        if not digests or not self.has_namespace(namespace):
            return [], cursor
        return self.index(namespace).ids_of_digests(digests), cursor

    def delete_object(self, namespace: str, id: str) -> bool:
        return self.index(namespace).delete(id)

    def list_objects(self, namespace: str, after: str, limit: int) -> tuple[list[str], bool]:
        if not self.has_namespace(namespace):
            return [], False
        return self.index(namespace).list(after, limit)

    def stats(self, namespace: str) -> Stats:
        count, total = self.index(namespace).stats() if self.has_namespace(namespace) else (0, 0)
        return Stats(objects=count, bytes=total, refs=len(self.list_refs(namespace)))

    # -- refs ----------------------------------------------------------------------------

    def create_ref(
        self, namespace: str, name: str, tmp: Path, new_hash: str
    ) -> Literal["created", "same", "conflict"]:
        """Append-only create: same content is a no-op, different content is a conflict."""
        final = self.ref_path(namespace, name)
        with self._lock(str(final)):
            if final.exists():
                try:
                    old_hash = objfile.read_verified(final)[1]
                except objfile.CorruptRecord as exc:
                    self._quarantine_ref(final, namespace, name, str(exc))
                else:
                    _discard(tmp)
                    return "same" if old_hash == new_hash else "conflict"
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)
        return "created"

    def replace_ref(self, namespace: str, name: str, tmp: Path) -> None:
        """Overwrite a ref unconditionally (admin only)."""
        final = self.ref_path(namespace, name)
        with self._lock(str(final)):
            final.parent.mkdir(parents=True, exist_ok=True)
            self._publish(tmp, final)

    def read_ref(self, namespace: str, name: str) -> tuple[bytes, str] | None:
        path = self.ref_path(namespace, name)
        try:
            return objfile.read_verified(path)
        except FileNotFoundError:
            return None
        except objfile.CorruptRecord as exc:
            with self._lock(str(path)):
                self._quarantine_ref(path, namespace, name, str(exc))
            return None

    def list_refs(self, namespace: str) -> list[str]:
        try:
            files = os.listdir(self._ns(namespace) / "refs")
        except FileNotFoundError:
            return []
        return sorted(n for n in map(names.ref_name_from_filename, files) if n is not None)

    def delete_ref(self, namespace: str, name: str) -> bool:
        path = self.ref_path(namespace, name)
        with self._lock(str(path)):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        return True

    def iter_refs(self, namespace: str | None = None) -> Iterator[StoredRef]:
        """Every ref record, for the scrubber."""
        for ns_dir in self.namespaces():
            if namespace is not None and ns_dir != names.namespace_dir(namespace):
                continue
            refs = self.ns_root / ns_dir / "refs"
            if refs.is_dir():
                for filename in sorted(os.listdir(refs)):
                    name = names.ref_name_from_filename(filename)
                    if name is not None:
                        yield StoredRef(ns_dir, name, refs / filename)

    def quarantine_ref(self, ref: StoredRef, reason: str) -> Path | None:
        with self._lock(str(ref.path)):
            return self._quarantine_ref(ref.path, ref.namespace_dir, ref.name, reason)

    # -- helpers -------------------------------------------------------------------------

    def _publish(self, tmp: Path, final: Path) -> None:
        try:
            os.replace(tmp, final)
        except BaseException:
            _discard(tmp)
            raise
        fsync_dir(final.parent)

    def _quarantine_ref(self, path: Path, namespace: str, name: str, why: str) -> Path | None:
        ns_dir = names.namespace_dir(namespace)
        target_dir = self.quarantine_dir / ns_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"ref-{name}.{time.time_ns()}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        log.warning("quarantined corrupt ref %s/%s (%s) to %s", ns_dir, name, why, target)
        return target


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
