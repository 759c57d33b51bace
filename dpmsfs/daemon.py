"""One mount's daemon: open the store, start the versioning engine, serve the mount.

Shut down in reverse order through one ExitStack: the mount goes first (no new
changes), then the engine, then the store is closed (its last packs flushed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chunker import DEFAULT_PARAMS
from dpmsfs.browse import restore_job
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.vfs import SnapshotTree
from dpmsfs.capture.engine import CaptureEngine
from dpmsfs.clock import SYSTEM_CLOCK, Clock
from dpmsfs.config import Config, remember_store
from dpmsfs.control import Handler, serve_control
from dpmsfs.drill_service import DrillService
from dpmsfs.errors import BusyError, DpmsError, UnavailableError, UsageError
from dpmsfs.fs.mount import MountOptions, Service, serve
from dpmsfs.fs.snapshot_mount import SnapshotView, server_arguments
from dpmsfs.monitor import Monitor
from dpmsfs.prune import PruneService, set_pin
from dpmsfs.store import gc as store_gc
from dpmsfs.store.errors import StoreError, StoreLockedError
from dpmsfs.store.retention import with_overrides
from dpmsfs.store.store import Store
from dpmsfs.sync.reporter import FleetReporter
from dpmsfs.sync.service import SyncService

log = logging.getLogger(__name__)

# On SIGTERM (`systemctl stop`, shutdown) the last changes go into a snapshot before the
# mount goes; bounded, so a hung store disk cannot hold the stop past systemd's
# TimeoutStopSec (90 s in dpmsfs@.service): what is left is captured by the next start's scan.
SHUTDOWN_SNAPSHOT_SECONDS = 60.0


def open_store(config: Config) -> Store:
    """Open the mount's store, creating it on first use."""
    path = str(config.store)
    identity = DEFAULT_PARAMS.identity
    try:
        if not os.path.isdir(path) or not os.listdir(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
            log.info("creating store %s", path)
            return Store.create(path, identity)
        return Store.open(path, identity)
    except StoreLockedError:
        raise BusyError(f"store {path} is in use by another dpmsfs process") from None
    except StoreError as exc:
        raise UsageError(f"store {path}: {exc}") from None
    except OSError as exc:
        raise UnavailableError(f"store {path}: {exc.strerror}") from None


def snapshot_offline(
    config: Config,
    label: str,
    clock: Clock = SYSTEM_CLOCK,
    progress: Callable[[CaptureEngine], None] | None = None,
) -> str:
    """Take a snapshot of an unmounted work directory (scan, capture, snapshot).

    `progress(engine)` is called every PROGRESS_SECONDS meanwhile (a terminal's bar)."""
    store = open_store(config)
    try:
        engine = CaptureEngine(config, store, clock)
        try:

            async def main() -> str:
                async with trio.open_nursery() as nursery:
                    if progress is not None:
                        nursery.start_soon(_report_progress, engine, progress)
                    record = await engine.snapshot_offline(label)
                    nursery.cancel_scope.cancel()
                return record.name

            name = trio.run(main)
        finally:
            engine.close()
    finally:
        store.close()
    return name


PROGRESS_SECONDS = 0.2


async def _report_progress(
    engine: CaptureEngine, progress: Callable[[CaptureEngine], None]
) -> None:
    while True:
        progress(engine)
        await trio.sleep(PROGRESS_SECONDS)


def start_sync(config: Config, store: Store, engine: CaptureEngine) -> SyncService | None:
    """The sync service when a server is configured (imports requests only then)."""
    if not config.server:
        return None
    from dpmsfs.sync.connect import open_backend

    backend = open_backend(config)
    log.info("sync to %s as %s", ", ".join(config.server), config.tool_id)
    return SyncService(
        store,
        engine,
        backend,
        bandwidth_limit=config.sync_bandwidth_limit,
        snapshot_idle_seconds=config.sync_snapshot_idle_seconds,
        snapshot_min_seconds=config.sync_snapshot_min_seconds,
        snapshot_max_seconds=config.sync_snapshot_max_seconds,
    )


def start_reporter(
    config: Config, sync: SyncService, status: Callable[[], Awaitable[dict[str, Any]]]
) -> FleetReporter:
    """The fleet report beside sync: every few minutes and after each good sync pass."""
    from dpmsfs.sync.connect import open_backend

    reporter = FleetReporter(lambda: open_backend(config), status, config.store)
    sync.pass_listeners.append(reporter.poke)
    return reporter


def _tune_gc() -> None:
    """Fewer cyclic-GC passes: the daemon allocates many short-lived tuples per request
    and per captured file, almost none of them in cycles. The default gen-0 threshold
    (700) ran a collection every few files (3 % of an import's CPU, perf). Objects from
    start-up are frozen so full collections do not walk them again."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(config: Config, capture: bool = True, clock: Clock = SYSTEM_CLOCK) -> None:
    """Serve `config.workdir` until unmounted or signalled."""
    _tune_gc()
    options = MountOptions(
        config.workdir,
        fd_budget=config.fd_budget,
        live_fuse=config.live_fuse,
        passthrough=config.passthrough,
        fuse_io_uring=config.fuse_io_uring,
        open_writer_recapture_seconds=config.open_writer_recapture_seconds,
    )
    live: dict[str, Any] = {"layer": config.live_fuse}
    if not capture:
        serve(options)
        return
    with contextlib.ExitStack() as stack:
        store = open_store(config)
        remember_store(config)
        stack.callback(store.close)
        engine = CaptureEngine(config, store, clock)
        stack.callback(engine.close)
        sync = start_sync(config, store, engine)
        if sync is not None:
            stack.callback(sync.backend.close)
        pruner = PruneService(store, config.retention, config.prune_interval_hours, clock,
                              config.local_budget)  # fmt: skip

        async def base_report() -> dict[str, Any]:
            # LMDB reads and stats of pending files: never on the FUSE loop's thread.
            report = await trio.to_thread.run_sync(engine.status_report)
            report["snapshot_view"] = view.state()
            report["sync"] = {"enabled": False}
            if sync is not None:
                report["sync"] = await trio.to_thread.run_sync(sync.report, report["pending_files"])
            report["prune"] = await trio.to_thread.run_sync(pruner.status)  # LMDB, statvfs
            report["fuse"] = dict(live)
            return report

        def counters(report: dict[str, Any]) -> None:
            """Monotonic counters since start and the newest snapshot's time (metrics)."""
            report["counters"] = {
                "captured_files": engine.status.captured_files,
                "captured_bytes": engine.status.captured_bytes,
                "new_bytes": engine.status.new_bytes,
            }
            last = report["last_snapshot"]
            record = store.get_snapshot(last) if last else None
            report["last_snapshot_ns"] = record.time_utc_ns if record else 0

        monitor = Monitor(config, base_report, counters)
        drills = DrillService(config, store, clock, monitor.report)

        async def status(_: dict[str, Any]) -> dict[str, Any]:
            return {"status": await monitor.report()}

        async def prune_request(request: dict[str, Any]) -> dict[str, Any]:
            policy = with_overrides(config.retention, dict(request.get("overrides") or {}))
            dry_run = bool(request.get("dry_run"))
            budget = request.get("budget_bytes")
            budget_bytes = int(budget) if isinstance(budget, int) and budget >= 0 else None
            result = await trio.to_thread.run_sync(pruner.run_now, policy, dry_run, budget_bytes)
            return {"prune": result.as_dict()}

        async def pin_request(request: dict[str, Any]) -> dict[str, Any]:
            name = await trio.to_thread.run_sync(
                set_pin, store, str(request.get("snapshot", "")),
                bool(request.get("pinned", True)), str(request.get("reason", "")),
            )  # fmt: skip
            return {"snapshot": name}

        async def ping(_: dict[str, Any]) -> dict[str, Any]:
            return {}

        async def snapshot(request: dict[str, Any]) -> dict[str, Any]:
            record = await engine.snapshot(label=str(request.get("label", "")))
            return {"snapshot": record.name}

        async def restore(request: dict[str, Any]) -> dict[str, Any]:
            """A small restore for `dpmsfs restore` (browse/restore_job.py says why)."""
            reader = SnapshotReader(store)
            job = await trio.to_thread.run_sync(
                restore_job.job_from_request, reader, config.workdir, request
            )
            if job is None:
                return {"delegated": False}
            safety = ""
            if job.in_place:
                safety = (await engine.snapshot(label="pre-restore")).name

            def run_job() -> restore_job.RestoreStats:
                with store_gc.lease(store, job.record.name):  # a prune meanwhile keeps its objects
                    return restore_job.restore(reader, job.record, job.selection, job.target,
                                               in_place=job.in_place, force=job.force)  # fmt: skip

            try:
                # Off the FUSE thread: an in-place restore writes through this very mount.
                stats = await trio.to_thread.run_sync(run_job)
            except OSError as exc:
                raise DpmsError(f"restore into {job.target} failed: {exc}") from None
            log.info("restored %d files, %d directories from %s into %s for the CLI",
                     stats.files, stats.directories, job.record.name, job.target)  # fmt: skip
            return {"delegated": True, "snapshot": job.record.name, "safety": safety,
                    "target": str(job.target), "stats": dataclasses.asdict(stats)}  # fmt: skip

        async def sync_now(request: dict[str, Any]) -> dict[str, Any]:
            """`dpmsfs sync`: without `names`, start a pass and say which snapshots exist
            now; with `names`, which of them the server does not hold yet (`--wait`)."""
            if sync is None:
                raise UsageError("sync is off for this mount (no server configured)")
            asked = request.get("names")
            if asked is None:
                if request.get("recheck"):
                    await trio.to_thread.run_sync(sync.recheck_now)
                sync.wake()
                names = await trio.to_thread.run_sync(sync.local_snapshot_names)
            elif isinstance(asked, list) and all(isinstance(n, str) for n in asked):
                names = [str(n) for n in asked]
            else:
                raise ValueError("names must be a list of snapshot names")
            remaining = await trio.to_thread.run_sync(sync.remaining, names)
            pruned = await trio.to_thread.run_sync(sync.pruned_there, names)
            return {"names": names, "remaining": remaining, "pruned_there": pruned,
                    "reachable": sync.status.reachable,
                    "last_error": sync.status.last_error,
                    "server_id": sync.status.server_id}  # fmt: skip

        async def control() -> None:
            handlers: dict[str, Handler] = {
                "status": status, "snapshot": snapshot, "ping": ping, "restore": restore,
                "prune": prune_request, "pin": pin_request,
                "sync": sync_now,
            }  # fmt: skip
            await serve_control(config.control_socket, handlers)

        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        view = SnapshotView(
            config.workdir,
            config.store,
            level,
            server_arguments(config.server, config.tool_id, config.token_file, config.tls_ca),
        )
        services: list[Service] = [
            engine.run, control, view.run, pruner.run, pruner.watch_space, monitor.run_alerts,
            monitor.run_metrics, drills.run,
        ]  # fmt: skip
        if sync is not None:
            services.append(sync.run)
            services.append(start_reporter(config, sync, monitor.report).run)

        async def before_unmount() -> None:
            await _shutdown_snapshot(engine)
            await view.stop()

        def mounted(mount: Any) -> None:
            # What INIT negotiated, for `dpmsfs status` (the pyfuse3 path: never
            # passthrough, and libfuse 3.14 cannot ask for HANDLE_KILLPRIV_V2).
            live.update(
                mount.status()
                if hasattr(mount, "status")
                else {"layer": "pyfuse3", "passthrough": False, "killpriv_v2": False}
            )

        serve(
            options,
            engine.journal,
            services,
            on_ready=mounted,
            snapshots=SnapshotTree(store),
            before_unmount=before_unmount,
        )


async def _shutdown_snapshot(engine: CaptureEngine) -> None:
    """Capture what is pending and take a snapshot labelled "shutdown", within a bound."""
    with trio.move_on_after(SHUTDOWN_SNAPSHOT_SECONDS) as scope:
        try:
            record = await engine.snapshot(label="shutdown")
        except (DpmsError, StoreError, OSError) as exc:
            log.error("shutdown snapshot failed (the next start captures the changes): %s", exc)
            return
        log.info("shutdown snapshot %s", record.name)
    if scope.cancelled_caught:
        log.error("shutdown snapshot not done in %.0f s; the next start captures the changes",
                  SHUTDOWN_SNAPSHOT_SECONDS)  # fmt: skip
