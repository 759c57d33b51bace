"""The sync service: a trio task beside the engine that keeps the server up to date.

One push pass at a time runs on a worker thread at background CPU and I/O priority
(never on the FUSE loop). After a pass the service waits: `IDLE_RECHECK_SECONDS` when all
went well, a backoff with jitter (doubling from `FIRST_BACKOFF` to `MAX_BACKOFF`) while the
server is unreachable. Any wait ends early when a snapshot is taken or `dpmsfs sync` asks,
so a new snapshot never waits for a backoff to run out. Errors never leave the service:
the mount must keep working whatever the server does.

It also takes snapshots for the RPO (`SnapshotTrigger`): with sync on, a snapshot follows
soon after capture goes idle, instead of the engine's periodic interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import trio

from dpmsfs.capture import priority
from dpmsfs.capture import state as capture_state
from dpmsfs.capture.engine import CaptureEngine
from dpmsfs.store.errors import StoreError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.sync.pins import PinsPusher
from dpmsfs.sync.pusher import PassReport, Pusher, ServerChanged, Stopped
from dpmsfs.sync.state import SyncState, server_key
from dpmsfs.sync.throttle import Throttle
from remote.backend import Backend
from remote.errors import PermanentRemoteError, RemoteError, TemporaryRemoteError

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 120.0
IDLE_RECHECK_SECONDS = 60.0
TRIGGER_POLL_SECONDS = 1.0


@dataclass
class SyncStatus:
    reachable: bool | None = None  # None: not tried yet
    server_url: str = ""
    server_id: str = ""
    last_success_ns: int = 0  # end of the last pass that left nothing queued
    last_attempt_ns: int = 0
    last_error: str = ""
    passes: int = 0
    running: bool = False
    next_attempt_in: float = 0.0


class SyncService:
    def __init__(
        self,
        store: Store,
        engine: CaptureEngine | None,
        backend: Backend,
        *,
        bandwidth_limit: int = 0,
        snapshot_idle_seconds: float = 5.0,
        snapshot_min_seconds: float = 30.0,
        snapshot_max_seconds: float = 0.0,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.engine = engine
        self.backend = backend
        self.state = SyncState(store.db)
        self.stop = threading.Event()
        self.throttle = Throttle(bandwidth_limit, stop=self.stop)
        self.pusher = Pusher(store, self.state, backend, throttle=self.throttle, stop=self.stop)
        self.status = SyncStatus()
        self.pins = PinsPusher(store, backend, now_ns)
        self.totals = PassReport()
        self.now_ns = now_ns
        self._wake = trio.Event()
        self._recheck = False
        self._pass_done = trio.Event()
        # called on the trio thread after each pass that ended without error (the fleet
        # report, dpmsfs/sync/reporter.py)
        self.pass_listeners: list[Callable[[], None]] = []
        self.trigger: SnapshotTrigger | None = None
        if engine is not None:
            self.trigger = SnapshotTrigger(
                engine, snapshot_idle_seconds, snapshot_min_seconds, snapshot_max_seconds
            )
            engine.snapshot_listeners.append(self._on_snapshot)

    # -- the service --------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._loop)
                if self.trigger is not None:
                    nursery.start_soon(self.trigger.run)
        finally:
            self.stop.set()

    def _on_snapshot(self, record: SnapshotRecord) -> None:
        self.wake()

    def wake(self, recheck: bool = False) -> None:
        """Start a pass now (from the trio thread): a new snapshot, `dpmsfs sync`."""
        self._recheck = self._recheck or recheck
        self._wake.set()

    def recheck_now(self) -> None:
        """`dpmsfs sync --recheck` (worker thread): drop the confirmations of the server that
        answered last before anyone asks what remains, so `--wait` waits for the recheck.
        Without a server known yet, the next pass rechecks the one it finds."""
        server_id = self.state.current_server()
        if server_id:
            self.pusher.recheck(server_id)
        else:
            self._recheck = True

    async def _loop(self) -> None:
        delay = FIRST_BACKOFF
        while True:
            self._wake = trio.Event()  # a snapshot taken during the pass starts the next
            wait = IDLE_RECHECK_SECONDS
            try:
                await self._in_thread(self._one_pass)
                delay = FIRST_BACKOFF
                if not self.status.last_error:
                    for listener in self.pass_listeners:
                        listener()
            except Stopped:
                return
            except ServerChanged as exc:
                log.info("sync: %s; starting over on the new server", exc)
                wait = 0.0
            except TemporaryRemoteError as exc:
                self._failed(exc, reachable=await trio.to_thread.run_sync(self._reachable))
                wait, delay = _jittered(delay), min(delay * 2, MAX_BACKOFF)
            except (PermanentRemoteError, RemoteError) as exc:
                self._failed(exc, reachable=True)
                wait, delay = _jittered(delay), min(delay * 2, MAX_BACKOFF)
            except StoreError as exc:
                self._failed(exc, reachable=self.status.reachable)
                wait, delay = _jittered(delay), min(delay * 2, MAX_BACKOFF)
            except Exception as exc:  # a bug must not stop sync for good, nor the mount
                log.exception("internal error in the sync pass")
                self._failed(exc, reachable=self.status.reachable)
                wait, delay = _jittered(delay), min(delay * 2, MAX_BACKOFF)
            self._pass_done.set()
            self._pass_done = trio.Event()
            self.status.next_attempt_in = wait
            with trio.move_on_after(wait):
                await self._wake.wait()

    def _reachable(self) -> bool:
        """After a temporary error: does a server answer at all (full disk, overload) or
        none (network gone)? One request, no retries, if the backend offers it: any HTTP
        answer counts (`answers`), since a busy server answering 503 is not unreachable;
        a backend without it is asked its `health`."""
        probe = getattr(self.backend, "answers", None)
        if not callable(probe):
            probe = getattr(self.backend, "health", None)
        if not callable(probe):
            return False
        try:
            return bool(probe())
        except Exception:
            return False

    def _failed(self, exc: BaseException, reachable: bool | None) -> None:
        text = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        if text != self.status.last_error:
            log.warning("sync: %s", text)
        self.status.last_error = text
        self.status.reachable = reachable

    def _one_pass(self) -> None:
        """On the worker thread, at background priority."""
        self.status.running = True
        self.status.last_attempt_ns = self.now_ns()
        try:
            # The server answers: say so now, not only when this pass ends (a first sync
            # of a whole tool takes many minutes; `reachable` stays None meanwhile).
            self.status.server_id = self.backend.server_id()
            self.status.reachable = True
            with priority.background():
                if self._recheck:
                    self._recheck = False
                    self.pusher.recheck()
                report = self.pusher.run_pass(self.totals)
                if not report.blocked:
                    self.pins.push()  # the server's prune keeps what the tool pinned
                self.status.server_id = self.backend.server_id()
        finally:
            self.status.running = False
            self.status.passes += 1
            self.status.server_url = _active_url(self.backend)
        self.status.reachable = True
        self.status.last_error = "; ".join(f"{k}: {v}" for k, v in report.blocked.items())
        report.blocked.clear()
        if not self.status.last_error:
            self.status.last_success_ns = self.now_ns()

    async def _in_thread(self, fn: Callable[[], None]) -> None:
        """Run `fn` on a worker thread; on cancellation (unmount) tell it to stop and wait
        for it, so the store is never closed under a running pass."""
        finished = False

        async def stop_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if not finished:
                    self.stop.set()

        error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            try:
                await trio.to_thread.run_sync(fn)
            except Exception as exc:  # re-raised below, not as an exception group
                error = exc
            finally:
                finished = True
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    # -- for the control socket -------------------------------------------------------
    def remaining(self, names: list[str]) -> list[str]:
        """Of `names`, the snapshots that still exist locally and are not on the server
        answering now (worker thread: LMDB reads)."""
        server_id = self.state.current_server()
        settled = self.state.settled_snapshots(server_key(server_id)) if server_id else set()
        local = {r.name for r in self.store.list_snapshots()}
        return [n for n in names if n in local and n not in settled]

    def pruned_there(self, names: list[str]) -> list[str]:
        """Of `names`, those the server answering now forgot by its prune: settled for
        `dpmsfs sync --wait`, but not on the server (worker thread: LMDB reads)."""
        server_id = self.state.current_server()
        gone = self.state.forgotten_snapshots(server_key(server_id)) if server_id else set()
        return [n for n in names if n in gone]

    def local_snapshot_names(self) -> list[str]:
        return [r.name for r in self.store.list_snapshots()]

    def report(self, pending_files: int = 0) -> dict[str, Any]:
        """The `sync` section of `dpmsfs status` (worker thread: LMDB reads)."""
        now = self.now_ns()
        queue = self.pusher.queue()
        progress = self.pusher.progress
        walked = progress.snapshot
        queued_bytes = progress.bytes_pending + sum(
            r.stats.new_bytes for r in queue if r.name != walked
        )
        # Lag: the oldest change not on the server. The oldest unconfirmed snapshot, else
        # the oldest change still waiting for capture, else (captured, not in a snapshot
        # yet) at most the age of the last snapshot.
        oldest = queue[0].time_utc_ns if queue else 0
        if not oldest and pending_files:
            oldest = self._oldest_pending_ns()
        if not oldest and self.trigger is not None and self.trigger.dirty_since_ns:
            oldest = self.trigger.dirty_since_ns
        server_id = self.state.current_server()
        gone = self.state.forgotten_snapshots(server_key(server_id)) if server_id else set()
        status = asdict(self.status)
        status.update(
            enabled=True,
            pruned_on_server=len(gone & {r.name for r in self.store.list_snapshots()}),
            lag_seconds=round(max(0, now - oldest) / 1e9, 1) if oldest else 0.0,
            queue={
                "snapshots": len(queue),
                "objects": progress.objects_pending,
                "bytes": queued_bytes,
                "oldest": queue[0].name if queue else "",
            },
            uploaded={
                "objects": self.totals.objects_created,
                "bytes": self.totals.bytes_uploaded,
                "snapshots": self.totals.snapshots_done,
                "retried": self.totals.retried_uploads,
                "checked": self.totals.objects_checked,
            },
            bandwidth_limit=self.throttle.rate,
        )
        return status

    def _oldest_pending_ns(self, limit: int = 10_000) -> int:
        """First-change time of the oldest of (up to `limit`) entries waiting for capture."""
        oldest = 0
        with self.store.db.read() as txn:
            for count, (_, entry) in enumerate(capture_state.iter_pending(txn)):
                if count >= limit:
                    break
                if not oldest or entry.first_ns < oldest:
                    oldest = entry.first_ns
        return oldest


class SnapshotTrigger:
    """Snapshots for the RPO: with sync on, a changed tree gets a snapshot once capture has
    been idle `idle_seconds` (nothing pending, nothing captured meanwhile), at most one per
    `min_seconds`. The engine's periodic snapshot (15 min) alone would make the RPO 15 min.
    Under continuous changes capture never idles; then the engine's `max_delay_seconds`
    still bounds each file, and a snapshot is taken every `max_seconds` regardless (45 s
    by default: with 60 s, 2 x min, files closed every 6 s waited up to 60.8 s for the
    server, just over the 60 s RPO aim)."""

    def __init__(
        self,
        engine: CaptureEngine,
        idle_seconds: float,
        min_seconds: float,
        max_seconds: float = 0.0,
    ) -> None:
        self.engine = engine
        self.idle_seconds = idle_seconds
        self.min_seconds = min_seconds
        self.max_seconds = max(min_seconds, max_seconds or 1.5 * min_seconds)
        self.taken = 0
        # when the trigger first saw captured changes not in a snapshot yet (for the lag)
        self.dirty_since_ns = 0

    async def run(self) -> None:
        engine = self.engine
        idle_since: float | None = None
        last_captured = engine.status.last_captured_ns
        while True:
            await trio.sleep(TRIGGER_POLL_SECONDS)
            if not engine.changed_since_snapshot:
                self.dirty_since_ns = 0
                idle_since = None
                continue
            if not self.dirty_since_ns:
                self.dirty_since_ns = engine.clock.now_ns()
            if self.idle_seconds <= 0:
                continue
            if engine.scan_progress.running or engine.status.paused_reason:
                continue
            pending = engine.journal.buffered or await trio.to_thread.run_sync(self._pending)
            now = engine.clock.monotonic()
            if pending or engine.status.last_captured_ns != last_captured:
                last_captured = engine.status.last_captured_ns
                idle_since = None
            elif idle_since is None:
                idle_since = now
            since_snapshot = engine.seconds_since_snapshot()
            settled = idle_since is not None and now - idle_since >= self.idle_seconds
            overdue = since_snapshot >= self.max_seconds
            if (settled or overdue) and since_snapshot >= self.min_seconds:
                try:
                    await engine.snapshot(label="", wait_for_pending=False)
                    self.taken += 1
                    self.dirty_since_ns = 0
                except StoreError as exc:
                    log.warning("sync-triggered snapshot failed: %s", exc)
                idle_since = None

    def _pending(self) -> int:
        with self.engine.db.read() as txn:
            return capture_state.pending_count(txn)


def _jittered(delay: float) -> float:
    return delay * (1.0 - 0.5 * random.random())


def _active_url(backend: object) -> str:
    """The URL answering now, if the backend has URLs (HttpBackend does)."""
    active_url = getattr(backend, "active_url", None)
    if isinstance(active_url, str):
        return active_url
    urls = getattr(backend, "urls", None)
    active = getattr(backend, "_active", 0)
    if isinstance(urls, list) and urls and isinstance(active, int) and active < len(urls):
        return str(urls[active])
    return str(getattr(backend, "url", ""))
