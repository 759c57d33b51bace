"""The versioning engine of one mount: journal flushing, ingest, snapshots, status.

Runs as trio tasks beside the FUSE loop. Everything heavy (LMDB writes, reading and
chunking files, building trees) runs on worker threads, so the FUSE handlers only ever
pay for the change hook's list append.

Every writer of the capture tables (journal flush, ingest commit, scan, snapshot) holds
`write_lock` for its transaction: the state they read stays the state they write.

Failures of the store (full or failing disk) pause capture, with the reason visible in
the status, and capture resumes by itself: the equipment software is never affected.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import trio

from dpmsfs.capture import ingest, priority, snapshotter, state
from dpmsfs.capture.journal import ChangeJournal
from dpmsfs.capture.prefetch import Prefetcher
from dpmsfs.capture.scan import ScanProgress, scan
from dpmsfs.capture.state import FileState, JournalEntry, Pending
from dpmsfs.clock import Clock
from dpmsfs.config import Config, Exclusions
from dpmsfs.store.db import WriteTxn
from dpmsfs.store.errors import StoreError, StoreFullError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
INGEST_POLL = 0.5
# Per commit (a commit seals a pack, so small files need big batches; a crash loses at
# most one batch of work, found again by the restart scan).
BATCH_PATHS = 4096
BATCH_BYTES = 1 << 30
# New bytes per batch compressed hard when the batch is not full (chunker/adaptive.py):
# about 1-2 s of background CPU; an import (full batches) stays on the fast path.
DENSE_BATCH_BYTES = 128 << 20
# Unstable tries in a row after which a file that only grew while being read is captured
# as it was when the read began (a datalog appended without pause: ingest.py docstring).
GROWING_AFTER_TRIES = 3
CLOSE_SETTLE_SECONDS = 1.0  # a closed file reopened at once (append, rewrite) is one version
# How long capture stays paused before retrying a failing store (tests shorten it).
PAUSE_RETRY_SECONDS = float(os.environ.get("DPMSFS_PAUSE_RETRY_SECONDS", "10"))


@dataclass
class CaptureStatus:
    paused_reason: str = ""
    last_captured_path: str = ""
    last_captured_ns: int = 0
    captured_files: int = 0
    captured_bytes: int = 0
    new_bytes: int = 0
    unstable_retries: int = 0
    captured_growing: int = 0  # captured with growth accepted after unstable tries
    errors: int = 0
    last_error: str = ""
    last_snapshot: str = ""


class _Work(NamedTuple):
    key: bytes
    path: bytes | None
    entry: JournalEntry
    previous: FileState | None
    size: int = 0  # bytes to read, as stat said when the batch was made (0: none)


class _WorkQueue:
    """The files of one batch, largest first, handed out one at a time to the workers.

    Worker 0 takes from the large end, the others from the small end. Small files cost
    mostly Python time (one core, the GIL), large ones mostly zstd time (released GIL):
    taking both at once keeps both cores busy (an import of the test tree ran its
    source files first and its datalogs after, each phase leaving a core half idle).
    Starting with the largest file also keeps one big file from finishing the batch
    alone. The prefetcher follows the small end, where reads are one file at a time.

    It also holds the batch's budget of bytes that may be compressed hard (dense): a
    batch that is not full is a trickle of changes, not an import or a catch-up.
    """

    def __init__(self, batch: list[_Work], dense_bytes: int = 0) -> None:
        self.small_first = sorted(batch, key=lambda w: w.size)
        self._items = collections.deque(reversed(self.small_first))
        self._lock = threading.Lock()
        self._prefetcher: Prefetcher | None = None
        self._dense_left = dense_bytes

    def follow(self, prefetcher: Prefetcher) -> None:
        """Tell `prefetcher` (walking `small_first`) about every file taken from the small end."""
        self._prefetcher = prefetcher

    def take_dense(self, nbytes: int) -> bool:
        """Whether `nbytes` more new bytes may be compressed hard (and count them)."""
        with self._lock:
            if self._dense_left < nbytes:
                return False
            self._dense_left -= nbytes
            return True

    def next(self, large: bool = False) -> _Work | None:
        with self._lock:
            if not self._items:
                return None
            work = self._items.popleft() if large else self._items.pop()
        if not large and self._prefetcher is not None:
            self._prefetcher.taken()
        return work


class CaptureEngine:
    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self.config = config
        self._exclusions = Exclusions.of(config.exclude)
        self._last_batch_full = False
        self.store = store
        self.db = store.db
        self.db.declare(*state.ALL_TABLES)
        self.clock = clock
        # The real directory, opened before the mount hides it.
        self.root_fd = os.open(config.workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.write_lock = threading.Lock()
        self.journal = ChangeJournal(self.db, clock)
        self.status = CaptureStatus()
        # Running from the start: a snapshot asked for before the start-up scan thread
        # began must still wait for it (run() and snapshot_offline() always scan first).
        self.scan_progress = ScanProgress(running=True)
        self._limiter = trio.CapacityLimiter(max(1, config.ingest_threads))
        self._wake_ingest = trio.Event()
        self._force_until_seq = 0  # ingest everything up to this seq without waiting
        # Journal key -> Unstable outcomes in a row. From GROWING_AFTER_TRIES on, a file
        # that only grew while being read is captured as it was (ingest.py docstring).
        self._unstable_tries: dict[bytes, int] = {}
        self._ingest_idle = trio.Event()
        self._changed_since_snapshot = True
        self._snapshot_lock = trio.Lock()
        self._last_snapshot_time = clock.monotonic()
        # Called on the trio thread after every snapshot (sync starts pushing it at once).
        self.snapshot_listeners: list[Callable[[SnapshotRecord], None]] = []

    @property
    def changed_since_snapshot(self) -> bool:
        return self._changed_since_snapshot

    def seconds_since_snapshot(self) -> float:
        return self.clock.monotonic() - self._last_snapshot_time

    def close(self) -> None:
        os.close(self.root_fd)

    # --- the service -----------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._supervise, self._flush_loop)
                nursery.start_soon(self._supervise, self._ingest_loop)
                nursery.start_soon(self._supervise, self._snapshot_loop)
                nursery.start_soon(self._supervise, self._scan_at_start)
        finally:
            # Unmounting: make the last events durable (the restart scan is the net).
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self._flush_journal)
                except StoreError as exc:
                    log.warning("last journal flush failed (%s); the next scan will catch up", exc)

    async def snapshot_offline(self, label: str) -> SnapshotRecord:
        """Without a mount: scan the real tree, capture what differs, take a snapshot."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._supervise, self._flush_loop)
            nursery.start_soon(self._supervise, self._ingest_loop)
            await self._run_scan(b"")
            record = await self.snapshot(label=label)
            nursery.cancel_scope.cancel()
        return record

    async def _supervise(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; a bug in it pauses capture and restarts it, never unmounts."""
        while True:
            try:
                await loop()
                return
            except Exception as exc:
                log.exception("internal error in %s; restarting it", loop.__name__)
                self.status.errors += 1
                self.status.last_error = f"internal error in {loop.__name__}: {exc!r}"
                self._pause(self.status.last_error)
                await trio.sleep(PAUSE_RETRY_SECONDS)

    async def _scan_at_start(self) -> None:
        await self._run_scan(b"")

    async def _run_scan(self, start: bytes) -> None:
        while True:
            try:
                found = await trio.to_thread.run_sync(self._scan, start)
                log.info("reconciliation scan of %r: %d differences", start, found)
                self._wake_ingest.set()
                return
            except StoreError as exc:
                self._pause(f"scan: {exc}")
                await trio.sleep(PAUSE_RETRY_SECONDS)

    def _scan(self, start: bytes) -> int:
        return scan(
            self.root_fd,
            self.db,
            self.clock,
            self.config.exclude,
            start,
            self.scan_progress,
            self.write_lock,
        )

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            if self.journal.rescan_needed:
                self.journal.rescan_needed = False
                await self._run_scan(b"")
            if not self.journal.buffered:
                continue
            try:
                count = await trio.to_thread.run_sync(self._flush_journal)
            except StoreError as exc:
                self._pause(f"journal: {exc}")
                await trio.sleep(PAUSE_RETRY_SECONDS)
                continue
            if count:
                self._changed_since_snapshot = True
                self._wake_ingest.set()

    def _flush_journal(self) -> int:
        with self.write_lock:
            return self.journal.flush()

    def _pause(self, reason: str) -> None:
        if self.status.paused_reason != reason:
            log.warning("capture paused: %s", reason)
        self.status.paused_reason = reason

    def _resume(self) -> None:
        if self.status.paused_reason:
            log.warning("capture resumed (was: %s)", self.status.paused_reason)
        self.status.paused_reason = ""

    # --- ingest ----------------------------------------------------------------------
    def _ready(self, entry: JournalEntry, now_ns: int) -> bool:
        if entry.seq <= self._force_until_seq:
            return True
        if entry.flags & Pending.CLOSED:
            return now_ns - entry.last_ns >= CLOSE_SETTLE_SECONDS * 1e9
        quiet = now_ns - entry.last_ns >= self.config.quiet_seconds * 1e9
        overdue = now_ns - entry.first_ns >= self.config.max_delay_seconds * 1e9
        return quiet or overdue

    def _select_batch(self) -> list[_Work]:
        """Ready journal entries, with their paths, previous states and sizes to read:
        up to BATCH_PATHS of them or BATCH_BYTES of content, whichever comes first."""
        now_ns = self.clock.now_ns()
        batch = []
        total = 0
        with self.db.read() as txn:
            for key, entry in state.iter_pending(txn):
                if not self._ready(entry, now_ns):
                    continue
                path = state.key_path(txn, key)
                if path is not None and self._exclusions.excludes_path(path):
                    path = None  # excluded: dropped from the state like a vanished file
                size = self._size_to_read(path) if entry.flags & Pending.CONTENT else 0
                batch.append(_Work(key, path, entry, state.get_state(txn, key), size))
                total += size
                if len(batch) >= BATCH_PATHS or total >= BATCH_BYTES:
                    break
        return batch

    def _size_to_read(self, path: bytes | None) -> int:
        """A regular file's size, for scheduling only (the capture checks everything)."""
        if path is None:
            return 0
        try:
            st = os.stat(path, dir_fd=self.root_fd, follow_symlinks=False)
        except (OSError, ValueError):
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    async def _ingest_loop(self) -> None:
        while True:
            with trio.move_on_after(INGEST_POLL):
                await self._wake_ingest.wait()
            self._wake_ingest = trio.Event()
            while True:
                try:
                    batch = await trio.to_thread.run_sync(self._select_batch)
                    if not batch:
                        break
                    await self._ingest_batch(batch)
                    self._resume()
                except StoreError as exc:
                    self._pause(str(exc))
                    await trio.sleep(PAUSE_RETRY_SECONDS)
            self._ingest_idle.set()
            self._ingest_idle = trio.Event()

    async def _ingest_batch(self, batch: list[_Work]) -> None:
        """Capture a batch on the worker threads (one hand-off per thread), then commit.

        The threads take the next file from a shared queue, so one thread stuck on a
        200 MB datalog does not leave the other idle with its share done.
        """
        # A reference span (store.references): a prune running beside this batch waits
        # for it before it decides what is live (docs/design.md "Prune").
        with self.store.references():
            await self._ingest_batch_in_span(batch)

    async def _ingest_batch_in_span(self, batch: list[_Work]) -> None:
        now_ns = self.clock.now_ns()
        outcomes: list[tuple[_Work, ingest.Outcome | None]] = []
        threads = min(max(1, self.config.ingest_threads), len(batch))
        full = len(batch) >= BATCH_PATHS or sum(w.size for w in batch) >= BATCH_BYTES
        # A trickle: this batch and the one before were not full (the last batch of an
        # import is not full either, but it follows a full one).
        trickle = not full and not self._last_batch_full
        self._last_batch_full = full
        queue = _WorkQueue(batch, dense_bytes=DENSE_BATCH_BYTES if trickle else 0)
        prefetcher = None
        if len(batch) > threads:
            prefetcher = Prefetcher(self.root_fd, [w.path for w in queue.small_first])
            queue.follow(prefetcher)
            prefetcher.start()

        async def worker(large: bool) -> None:
            done = await trio.to_thread.run_sync(
                self._capture_many, queue, now_ns, large, limiter=self._limiter
            )
            outcomes.extend(done)

        try:
            async with trio.open_nursery() as nursery:
                for index in range(threads):
                    nursery.start_soon(worker, index == 0 and threads > 1)
        finally:
            if prefetcher is not None:
                prefetcher.stop()
        await trio.to_thread.run_sync(self._commit_batch, outcomes)

    def _capture_many(
        self, queue: _WorkQueue, now_ns: int, large: bool = False
    ) -> list[tuple[_Work, ingest.Outcome | None]]:
        """Runs on a worker thread. A StoreError (disk full...) stops the batch."""
        with priority.background():
            return self._capture_each(queue, now_ns, large)

    def _capture_each(
        self, queue: _WorkQueue, now_ns: int, large: bool = False
    ) -> list[tuple[_Work, ingest.Outcome | None]]:
        done: list[tuple[_Work, ingest.Outcome | None]] = []
        parents = ingest.ParentDirs(self.root_fd)
        try:
            self._capture_queue(queue, now_ns, large, parents, done)
        finally:
            parents.close()
        return done

    def _capture_queue(
        self,
        queue: _WorkQueue,
        now_ns: int,
        large: bool,
        parents: ingest.ParentDirs,
        done: list[tuple[_Work, ingest.Outcome | None]],
    ) -> None:
        """Capture files from `queue` (its large or small end) into `done` until empty."""
        while (work := queue.next(large)) is not None:
            path = work.path
            if path is None:  # vanished, or excluded (see _select_batch)
                done.append((work, ingest.Gone()))
                continue
            reuse = not work.entry.flags & Pending.CONTENT
            growing = self._unstable_tries.get(work.key, 0) >= GROWING_AFTER_TRIES
            outcome: ingest.Outcome | None
            try:
                outcome = ingest.capture(
                    self.root_fd,
                    path,
                    self.store,
                    work.previous,
                    reuse,
                    now_ns,
                    parents,
                    queue.take_dense,
                    accept_growth=growing,
                )
            except StoreError:
                raise
            except OSError as exc:
                self.status.errors += 1
                self.status.last_error = f"{os.fsdecode(path)}: {exc.strerror}"
                log.warning("cannot capture %s: %s", os.fsdecode(path), exc)
                outcome = None
            done.append((work, outcome))

    def _commit_batch(self, outcomes: list[tuple[_Work, ingest.Outcome | None]]) -> None:
        now_ns = self.clock.now_ns()

        def body(txn: WriteTxn) -> None:
            for work, outcome in outcomes:
                if isinstance(outcome, ingest.Unstable):
                    # Counted even if changed meanwhile: the file is being written on.
                    self._unstable_tries[work.key] = self._unstable_tries.get(work.key, 0) + 1
                current = state.get_pending(txn, work.key)
                if current is None or current.seq != work.entry.seq:
                    continue  # changed or moved meanwhile: it will be captured again
                if not isinstance(outcome, ingest.Unstable):
                    tries = self._unstable_tries.pop(work.key, 0)
                    if tries >= GROWING_AFTER_TRIES and isinstance(outcome, ingest.Captured):
                        self.status.captured_growing += 1
                if isinstance(outcome, ingest.Captured):
                    state.put_state(txn, work.key, outcome.state)
                    txn.delete(state.T_JOURNAL, work.key)
                    self.status.captured_files += 1
                    self.status.captured_bytes += outcome.read_bytes
                    self.status.new_bytes += outcome.new_bytes
                    self.status.last_captured_path = os.fsdecode(work.path or b"")
                    self.status.last_captured_ns = now_ns
                elif isinstance(outcome, ingest.Gone):
                    state.delete_entry(txn, work.key)
                    txn.delete(state.T_JOURNAL, work.key)
                else:
                    # Unstable or failed: wait for quiet again before the next try.
                    if isinstance(outcome, ingest.Unstable):
                        self.status.unstable_retries += 1
                    flags = current.flags & ~Pending.CLOSED
                    if work.entry.seq <= self._force_until_seq:
                        flags |= Pending.CLOSED
                    retry = current._replace(flags=flags, last_ns=now_ns)
                    txn.put(state.T_JOURNAL, work.key, state.encode_journal(retry))

        with self.write_lock:
            self.store.flush()  # chunks indexed before any state refers to them
            self.db.transact(body)
        self._changed_since_snapshot = True

    # --- snapshots -------------------------------------------------------------------
    async def _snapshot_loop(self) -> None:
        interval = self.config.snapshot_interval_minutes * 60
        while True:
            await trio.sleep(min(interval, 30.0))
            due = self.clock.monotonic() - self._last_snapshot_time >= interval
            if due and self._changed_since_snapshot and not self.scan_progress.running:
                try:
                    await self.snapshot(label="", wait_for_pending=False)
                except StoreError as exc:
                    self._pause(f"snapshot: {exc}")

    async def snapshot(self, label: str = "", wait_for_pending: bool = True) -> SnapshotRecord:
        """Take a snapshot; first capture everything pending now (unless told not to)."""
        async with self._snapshot_lock:
            if wait_for_pending:
                await self.drain()
            self._changed_since_snapshot = False
            record = await trio.to_thread.run_sync(
                lambda: snapshotter.take_snapshot(
                    self.db, self.store, self.clock, self.write_lock, label, self.config.tool_id
                )
            )
            self._last_snapshot_time = self.clock.monotonic()
            self.status.last_snapshot = record.name
        for listener in self.snapshot_listeners:
            listener(record)
        return record

    async def drain(self) -> None:
        """Return once every change recorded before this call is captured (or has failed)."""
        while self.scan_progress.running:
            await trio.sleep(0.1)
        await trio.to_thread.run_sync(self._flush_journal)
        with self.db.read() as txn:
            self._force_until_seq = state.last_seq(txn)
        while True:
            remaining = await trio.to_thread.run_sync(self._forced_pending_left)
            if not remaining:
                return
            if self.status.paused_reason:
                raise StoreFullError(f"capture is paused: {self.status.paused_reason}")
            self._wake_ingest.set()
            await self._ingest_idle.wait()

    def _forced_pending_left(self) -> bool:
        """Is any journal entry older than the drain still pending? (worker thread)"""
        with self.db.read() as txn:
            return any(e.seq <= self._force_until_seq for _, e in state.iter_pending(txn))

    # --- status ----------------------------------------------------------------------
    def status_report(self) -> dict[str, Any]:
        with self.db.read() as txn:
            pending = state.pending_count(txn)
            files, total_bytes = state.totals(txn)
        stats = self.store.stats()
        snapshots = self.status.last_snapshot or _last_snapshot_name(self.store)
        progress = self.scan_progress
        return {
            "workdir": str(self.config.workdir),
            "store": str(self.config.store),
            "tool_id": self.config.tool_id,
            "capture": "paused" if self.status.paused_reason else "running",
            "paused_reason": self.status.paused_reason,
            "pending_files": pending + self.journal.buffered,
            "pending_bytes": self._pending_bytes(),
            "captured_files": files,
            "captured_bytes": total_bytes,
            "last_captured_path": self.status.last_captured_path,
            "last_captured_ns": self.status.last_captured_ns,
            "last_snapshot": snapshots,
            "import": {
                "running": progress.running,
                "directories": progress.directories,
                "entries": progress.entries,
                "differences": progress.differences,
                "bytes_seen": progress.bytes_seen,
            },
            "errors": self.status.errors,
            "last_error": self.status.last_error,
            "unstable_retries": self.status.unstable_retries,
            "captured_growing": self.status.captured_growing,
            "store_objects": stats.objects,
            "store_bytes": stats.stored_bytes,
            "store_raw_bytes": stats.raw_bytes,
        }

    def _pending_bytes(self, limit: int = 10_000) -> int:
        """Sizes of pending files now (the first `limit` of them)."""
        total = 0
        with self.db.read() as txn:
            for count, (key, _) in enumerate(state.iter_pending(txn)):
                path = state.key_path(txn, key)
                if count >= limit:
                    break
                if path is None:
                    continue
                try:
                    parent_fd, name = ingest.open_parent(self.root_fd, path)
                except OSError:
                    continue
                try:
                    total += os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_size
                except OSError:
                    pass
                finally:
                    os.close(parent_fd)
        return total


def _last_snapshot_name(store: Store) -> str:
    last = ""
    for record in store.list_snapshots():
        last = record.name
    return last
