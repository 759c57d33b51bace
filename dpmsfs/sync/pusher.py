"""One push pass: every local snapshot not yet confirmed on the server, oldest first.

For one snapshot the pass walks its trees depth first, skipping every subtree whose tree id
this server already confirmed (`state.py`), and collects the chunks and trees it has not
seen confirmed. Work goes to the server in batches (up to `BATCH_OBJECTS` ids or
`BATCH_BYTES` of frames): SHA-256 of each object's plain content (decoded from the local
pack once, then cached), one `missing` query, then `upload` of what is missing, chunks
before trees, frames straight from the local packs. Trees enter a batch only after
everything below them (post-order), so an uploaded tree never names an object the server
lacks. The snapshot's ref is written last: a snapshot exists on the server only once
everything it references does.

Confirmations are committed after each batch, so a crash (kill -9) redoes at most the
batch in flight; uploads are idempotent on the server.

Runs on one worker thread at background priority; `stop` (a threading.Event) ends it
between requests.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from chunker import CorruptChunkError, chunk_id, decompress_chunk
from dpmsfs.capture import priority
from dpmsfs.store.errors import CorruptObjectError, ObjectNotFoundError, StoreError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from dpmsfs.sync.state import SyncState, server_key
from dpmsfs.sync.throttle import Throttle
from remote.backend import STORED_STATUSES, Backend
from remote.errors import ConflictError, ForgottenError, NotFoundError

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_OBJECTS = 1000
BATCH_BYTES = 32 << 20
REF_PREFIX = "snapshot."


class ServerChanged(Exception):
    """The server answering changed mid-snapshot (HA failover): restart the pass."""


class Stopped(Exception):
    """The daemon is shutting down."""


@dataclass
class PassReport:
    """What one pass did (also the daemon's running totals, summed)."""

    snapshots_done: int = 0
    objects_checked: int = 0
    objects_uploaded: int = 0
    objects_created: int = 0
    bytes_uploaded: int = 0  # frame bytes of records the server stored as new
    bytes_sent: int = 0  # frame bytes sent (created or exists)
    retried_uploads: int = 0
    blocked: dict[str, str] = field(default_factory=dict)  # snapshot -> why


@dataclass
class Progress:
    """Live figures of the pass for `dpmsfs status` (written by the pass thread only)."""

    snapshot: str = ""
    objects_pending: int = 0
    bytes_pending: int = 0


class _Batch:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.trees: list[bytes] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.chunks) + len(self.trees)


@dataclass
class _Prepared:
    """A batch read and hashed, ready to be asked about and uploaded."""

    batch: _Batch
    frames: dict[bytes, bytes]
    digests: dict[bytes, bytes]
    new_hashes: list[tuple[bytes, bytes]]


class Pusher:
    def __init__(
        self,
        store: Store,
        sync_state: SyncState,
        backend: Backend,
        *,
        throttle: Throttle | None = None,
        stop: threading.Event | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        batch_objects: int = BATCH_OBJECTS,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.store = store
        self.state = sync_state
        self.backend = backend
        self.stop = stop or threading.Event()
        self.throttle = throttle or Throttle(0, stop=self.stop)
        self.now_ns = now_ns
        self.batch_objects = batch_objects
        self.batch_bytes = batch_bytes
        self.progress = Progress()

    # -- the pass -----------------------------------------------------------------------
    def run_pass(self, report: PassReport | None = None) -> PassReport:
        """Push every unconfirmed snapshot; returns when the queue is empty (or blocked)."""
        report = report or PassReport()
        server_id = self._adopt_server()
        key = server_key(server_id)
        audit = self.state.needs_audit(key)
        self._repair_damaged(server_id, report)
        self._learn_forgotten(server_id)
        attempted: set[str] = set()
        while True:
            record = self._next_unconfirmed(key, attempted)
            if record is None:
                break
            attempted.add(record.name)
            self._check_stop()
            try:
                self.push_snapshot(record, server_id, report)
            except ServerChanged:
                raise
            except _Blocked as exc:
                current = self.store.get_snapshot(record.name)
                if current is None:
                    log.info("snapshot %s was removed locally while syncing", record.name)
                    continue
                if current.root_tree_id != record.root_tree_id:
                    log.info("snapshot %s was rewritten locally while syncing", record.name)
                    attempted.discard(record.name)  # push the new version now
                    continue
                log.warning("snapshot %s cannot be synced yet: %s", record.name, exc)
                report.blocked[record.name] = str(exc)
        if audit and not report.blocked:
            self.state.set_audit(key, False)
            log.info("recheck of server %s finished", server_id)
        self.progress = Progress()
        return report

    def _repair_damaged(self, server_id: str, report: PassReport) -> None:
        """Upload again what the server found damaged since we last asked (a blob that
        `dpmsfs-server verify`, a `missing` re-check or a client's `objects:suspect`
        quarantined): its snapshots were confirmed complete there, so no walk of ours
        would send it again. From the local store, where it is checked against its id;
        an id the store no longer holds is logged and left to `dpmsfs sync --recheck`."""
        key = server_key(server_id)
        try:
            ids, cursor = self._call(
                server_id, lambda: self.backend.damaged(self.state.damaged_cursor(key))
            )
        except NotFoundError:
            log.debug("server %s does not list damaged objects", server_id)
            return
        wanted: list[bytes] = []
        for hex_id in ids:
            oid = bytes.fromhex(hex_id)
            if self.store.locate(oid) is None:
                log.warning("the server lost object %s, which this store no longer holds", hex_id)
                continue
            wanted.append(oid)
        for start in range(0, len(wanted), self.batch_objects):
            part = wanted[start : start + self.batch_objects]
            frames: dict[bytes, bytes] = {}
            digests: dict[bytes, bytes] = {}
            for oid in part:
                try:
                    frame, plain = self._read_verified(oid)
                except _Blocked as exc:
                    log.warning("cannot repair the server's copy: %s", exc)
                    continue
                frames[oid] = frame
                digests[oid] = hashlib.sha256(plain).digest()
            send = [o for o in part if o in frames]
            if not send:
                continue
            log.warning("server %s: uploading %d damaged objects again", server_id, len(send))
            try:
                self._upload(send, frames, digests, server_id, report, record_each=True)
            except _Blocked as exc:  # the cursor stays: the next pass asks again
                log.warning("repair of the server's damaged copies failed: %s", exc)
                return
        self.state.set_damaged_cursor(key, cursor)

    def _learn_forgotten(self, server_id: str) -> None:
        """Ask which queued snapshots the server's prune forgot, before sending any of
        their objects: a recheck or a failover must neither undo an admin's prune nor
        upload what it reclaimed. A server without the endpoint is asked nothing; its
        410 to the ref's PUT (`push_snapshot`) then says the same, after the upload."""
        key = server_key(server_id)
        queued = [REF_PREFIX + r.name for r in self.queue(server_id)]
        if not queued:
            return
        try:
            gone = self._call(server_id, lambda: self.backend.forgotten_refs(queued))
        except NotFoundError:
            log.debug("server %s does not list forgotten refs", server_id)
            return
        names = [ref[len(REF_PREFIX) :] for ref in gone if ref.startswith(REF_PREFIX)]
        if names:
            self.state.mark_forgotten(key, names, self.now_ns())
            log.info("%d local snapshots were pruned on server %s: not sent again (%s%s)",
                     len(names), server_id, ", ".join(names[:3]),
                     ", ..." if len(names) > 3 else "")  # fmt: skip

    def queue(self, server_id: str | None = None) -> list[SnapshotRecord]:
        """The local snapshots not settled on `server_id` (default: the last answering):
        neither confirmed there nor forgotten there by a prune."""
        sid = server_id if server_id is not None else self.state.current_server()
        if not sid:
            return list(self.store.list_snapshots())
        settled = self.state.settled_snapshots(server_key(sid))
        return [r for r in self.store.list_snapshots() if r.name not in settled]

    def _next_unconfirmed(self, key: bytes, attempted: set[str]) -> SnapshotRecord | None:
        """Re-read on every step: snapshots taken meanwhile join, pruned ones leave."""
        settled = self.state.settled_snapshots(key)
        for record in self.store.list_snapshots():
            if record.name not in settled and record.name not in attempted:
                return record
        return None

    def _adopt_server(self) -> str:
        """Notice a change of the answering server: its refs say which snapshots are
        complete there (HA invariant), unless it is being rechecked."""
        server_id = self.backend.server_id()
        if server_id == self.state.current_server():
            return server_id
        key = server_key(server_id)
        previous = self.state.current_server()
        log.log(logging.WARNING if previous else logging.INFO,
                "server answering is now %s (was %s): re-checking what it holds",
                server_id, previous or "none")  # fmt: skip
        if not self.state.needs_audit(key):
            refs = set(self.backend.list_refs())
            confirmed = self.state.confirmed_snapshots(key)
            complete = [
                r.name
                for r in self.store.list_snapshots()
                if REF_PREFIX + r.name in refs and r.name not in confirmed
            ]
            self.state.confirm_snapshots(key, complete, self.now_ns())
            log.info("%d local snapshots are already complete on %s", len(complete), server_id)
        self.state.set_current_server(server_id)
        return server_id

    def recheck(self, server_id: str | None = None) -> None:
        """Forget what a server (default: the one answering) confirmed and re-check all of
        it: a damaged copy the server quarantined since is then uploaded again."""
        server_id = server_id or self.backend.server_id()
        key = server_key(server_id)
        self.state.set_audit(key, True)
        dropped = self.state.forget_server(key)
        log.info("recheck of %s: %d confirmations dropped", server_id, dropped)

    # -- one snapshot -------------------------------------------------------------------
    def push_snapshot(self, record: SnapshotRecord, server_id: str, report: PassReport) -> None:
        key = server_key(server_id)
        self.progress = Progress(snapshot=record.name)
        seen: set[bytes] = set()
        batch = _Batch()
        # A bounded pipeline: batch n+1 is read from the packs and hashed on one helper
        # thread while batch n is asked about and uploaded here, so at most two batches'
        # frames are in memory (2 x batch_bytes). Batches are sent in walk order, which
        # keeps every tree behind everything it names.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-hash") as hasher:
            ahead: Future[_Prepared] | None = None
            for kind, oid, size in self._walk(record.root_tree_id, key, seen):
                if kind == "tree":
                    batch.trees.append(oid)
                else:
                    batch.chunks.append(oid)
                batch.nbytes += size
                self.progress.objects_pending += 1
                self.progress.bytes_pending += size
                if len(batch) >= self.batch_objects or batch.nbytes >= self.batch_bytes:
                    following = hasher.submit(self._prepare_in_background, batch)
                    if ahead is not None:
                        self._send(ahead.result(), server_id, report)
                    ahead = following
                    batch = _Batch()
            if ahead is not None:
                self._send(ahead.result(), server_id, report)
        self._flush(batch, server_id, report)
        self._check_server(server_id)
        self._check_stop()
        try:
            self.backend.put_ref(REF_PREFIX + record.name, record.encode())
        except ConflictError:
            # The server holds another record under this name: the snapshot was rewritten
            # locally (a prune path rule trimmed it) after the server got the complete one.
            # The server's copy stands (docs/design.md, prune's sync contract).
            log.info("snapshot %s: the server keeps its own (earlier) record", record.name)
        except ForgottenError:
            # Pruned there between our `refs:forgotten` question and now (or a server
            # without that endpoint): the prune stands; the objects just sent are garbage
            # for its next sweep.
            self.state.mark_forgotten(key, [record.name], self.now_ns())
            log.info("snapshot %s was pruned on server %s: not sent again", record.name,
                     server_id)  # fmt: skip
            return
        if self.backend.server_id() != server_id:
            # The ref may have reached a server that was not checked: recheck that one.
            self.state.set_audit(server_key(self.backend.server_id()), True)
            raise ServerChanged(server_id)
        self.state.confirm_snapshot(key, record.name, self.now_ns())
        report.snapshots_done += 1
        log.info("snapshot %s is on server %s", record.name, server_id)

    def _walk(self, root: bytes, key: bytes, seen: set[bytes]) -> Iterator[tuple[str, bytes, int]]:
        """Unconfirmed objects below `root`, each once, every tree after all it names."""
        if self._confirmed(key, root):
            return
        seen.add(root)
        chunks: list[tuple[str, bytes, int]] = []
        stack = [(root, self._expand(root, key, seen, chunks))]
        while True:
            yield from chunks
            chunks.clear()
            if not stack:
                return
            tree_id, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                yield "tree", tree_id, self._stored_size(tree_id)
            else:
                stack.append((child, self._expand(child, key, seen, chunks)))

    def _expand(
        self, tree_id: bytes, key: bytes, seen: set[bytes], chunks: list[tuple[str, bytes, int]]
    ) -> Iterator[bytes]:
        """Read one tree: its new chunks go to `chunks`, its unconfirmed subtrees returned."""
        try:
            entries = self.store.read_tree(tree_id)
        except (ObjectNotFoundError, CorruptObjectError, StoreError) as exc:
            raise _Blocked(f"tree {tree_id.hex()} cannot be read locally: {exc}") from None
        subtrees: list[bytes] = []
        with self.store.db.read() as txn:
            for entry in entries:
                if entry.type == EntryType.FILE:
                    for cid in entry.content:
                        if cid in seen:
                            continue
                        seen.add(cid)
                        if self.state.is_confirmed(txn, key, cid):
                            continue
                        loc = self.store.locate(cid, txn)
                        if loc is None:
                            raise _Blocked(f"chunk {cid.hex()} is not in the local store")
                        chunks.append(("chunk", cid, loc.stored_length))
                elif entry.type == EntryType.DIR:
                    sub = entry.content[0]
                    if sub in seen:
                        continue
                    seen.add(sub)
                    if not self.state.is_confirmed(txn, key, sub):
                        subtrees.append(sub)
        return iter(subtrees)

    def _confirmed(self, key: bytes, oid: bytes) -> bool:
        with self.store.db.read() as txn:
            return self.state.is_confirmed(txn, key, oid)

    def _stored_size(self, oid: bytes) -> int:
        loc = self.store.locate(oid)
        if loc is None:
            raise _Blocked(f"tree {oid.hex()} is not in the local store")
        return loc.stored_length

    # -- one batch ----------------------------------------------------------------------
    def _flush(self, batch: _Batch, server_id: str, report: PassReport) -> None:
        if len(batch):
            self._send(self._prepare(batch), server_id, report)

    def _prepare_in_background(self, batch: _Batch) -> _Prepared:
        with priority.background():  # the helper thread, like the pass, yields to the tool
            return self._prepare(batch)

    def _prepare(self, batch: _Batch) -> _Prepared:
        """Frames and SHA-256 of a batch's objects not hashed before (read once from the
        local packs, checked against their ids)."""
        ids = batch.chunks + batch.trees
        frames: dict[bytes, bytes] = {}
        digests: dict[bytes, bytes] = {}
        new_hashes: list[tuple[bytes, bytes]] = []
        with self.store.db.read() as txn:
            for oid in ids:
                known = self.state.sha256_of(txn, oid)
                if known is not None:
                    digests[oid] = known
        for oid in ids:
            if oid not in digests:
                frame, plain = self._read_verified(oid)
                digests[oid] = hashlib.sha256(plain).digest()
                frames[oid] = frame
                new_hashes.append((oid, digests[oid]))
        return _Prepared(batch, frames, digests, new_hashes)

    def _send(self, prepared: _Prepared, server_id: str, report: PassReport) -> None:
        """One `missing` query for a prepared batch, then the upload of what is missing."""
        self._check_stop()
        batch, frames, digests = prepared.batch, prepared.frames, prepared.digests
        new_hashes = prepared.new_hashes
        key = server_key(server_id)
        ids = batch.chunks + batch.trees
        query = [(o.hex(), digests[o].hex()) for o in ids]
        missing = set(self._call(server_id, lambda: self.backend.missing(query)))
        report.objects_checked += len(ids)
        present_chunks = [o for o in batch.chunks if o.hex() not in missing]
        present_trees = [o for o in batch.trees if o.hex() not in missing]
        # Hashes and the chunks the server holds are durable before any upload. Trees are
        # confirmed only once every chunk of the batch is (a confirmed tree vouches for all
        # below it, and the next pass skips it).
        self.state.record_batch(key, new_hashes, present_chunks)
        send = [o for o in batch.chunks if o.hex() in missing]
        if send:
            self._upload(send, frames, digests, server_id, report, record_each=True)
        send = [o for o in batch.trees if o.hex() in missing]
        if send:
            self._upload(send, frames, digests, server_id, report, record_each=False)
        self.state.record_batch(key, (), present_trees)
        self.progress.objects_pending = max(0, self.progress.objects_pending - len(ids))
        self.progress.bytes_pending = max(0, self.progress.bytes_pending - batch.nbytes)

    def _upload(
        self,
        oids: list[bytes],
        frames: dict[bytes, bytes],
        digests: dict[bytes, bytes],
        server_id: str,
        report: PassReport,
        record_each: bool,
    ) -> None:
        """Upload `oids` in requests of about `batch_bytes` (less under a bandwidth limit).
        With `record_each`, each request's accepted objects are confirmed at once (chunks);
        otherwise all together at the end (trees: a tree retried after its parent must not
        leave the parent confirmed without it)."""
        key = server_key(server_id)
        done: list[bytes] = []
        limit = self.throttle.request_size(self.batch_bytes)
        group: list[tuple[bytes, bytes]] = []
        size = 0
        pending = list(oids)
        retried: set[bytes] = set()
        while pending or group:
            if pending:
                oid = pending.pop(0)
                frame = frames.pop(oid, None) or self._read_verified(oid)[0]
                group.append((oid, frame))
                size += len(frame)
                if size < limit and pending:
                    continue
            self._check_stop()
            self.throttle.consume(size)
            records = [(o.hex(), digests[o].hex(), f) for o, f in group]
            results = self._call(server_id, functools.partial(self.backend.upload, records))
            accepted = []
            for oid, frame in group:
                status = results.get(oid.hex(), "")
                if status in STORED_STATUSES:
                    accepted.append(oid)
                    report.objects_uploaded += 1
                    report.bytes_sent += len(frame)
                    if status == "created":
                        report.objects_created += 1
                        report.bytes_uploaded += len(frame)
                elif oid not in retried:
                    # Damaged on the way (or a damaged copy on the server): send it again,
                    # read afresh from the local pack.
                    log.warning("upload of %s answered %r: sending it again", oid.hex(), status)
                    retried.add(oid)
                    report.retried_uploads += 1
                    pending.append(oid)
                else:
                    raise _Blocked(f"the server refused object {oid.hex()} twice ({status})")
            if record_each:
                self.state.record_batch(key, (), accepted)
            else:
                done.extend(accepted)
            group, size = [], 0
        self.state.record_batch(key, (), done)

    def _read_verified(self, oid: bytes) -> tuple[bytes, bytes]:
        """The stored frame of `oid` and its plain content, checked against the id."""
        loc = self.store.locate(oid)
        if loc is None:
            raise _Blocked(f"object {oid.hex()} is not in the local store")
        try:
            frame = bytes(self.store.read_blob(loc, oid))
            plain = decompress_chunk(frame)
        except (CorruptObjectError, CorruptChunkError) as exc:
            raise _Blocked(f"object {oid.hex()} is damaged in the local store: {exc}") from None
        if chunk_id(plain) != oid:
            raise _Blocked(f"object {oid.hex()} is damaged in the local store")
        return frame, plain

    # -- guards -------------------------------------------------------------------------
    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()

    def _call(self, server_id: str, fn: Callable[[], T]) -> T:
        """A backend call whose answer counts only if the same server gave it: a failover
        inside the call (HttpBackend tries the next URL) discards the answer."""
        self._check_server(server_id)
        result = fn()
        self._check_server(server_id)
        return result

    def _check_server(self, server_id: str) -> None:
        now = self.backend.server_id()
        if now != server_id:
            raise ServerChanged(f"server changed from {server_id} to {now}")


class _Blocked(Exception):
    """This snapshot cannot be completed now (an object missing or damaged locally, a
    refused upload); later snapshots still go."""
