"""Serve the live work-directory mount on our own FUSE layer (dpmsfs.fuseproto).

The counterpart of mount.serve's pyfuse3 path, with the same order of things: open the
real directory (O_PATH) before the mount hides it, mount, start the fail-open
watchdog, run the trio services in the main thread while the session's worker
threads serve requests, and on SIGTERM stop the snapshot view before unmounting.

Differences from the pyfuse3 path:
* mount(2) with `fd=N` directly: the flags are ours, so set-id programs and device
  files work without remounting (fusermount3 always added nosuid,nodev), and there is
  no `auto_unmount`: the watchdog process (watchdog.py), started before mount(2), is
  the fail-open net.
* A file held open for writing is re-reported every `open_writer_recapture_seconds`
  while it changes: with passthrough the daemon sees no WRITE requests, and a datalog
  open for hours must still be captured every few minutes, not only at its close. The
  same poll follows files a program still writes through a previous (killed) daemon's
  mount (old_writers.py).
"""

from __future__ import annotations

import errno
import faulthandler
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from dpmsfs.browse.vfs import SnapshotTree
from dpmsfs.errors import UnavailableError, UsageError
from dpmsfs.fs import old_writers, watchdog
from dpmsfs.fs.changes import ChangeKind, ChangeSink, NullSink
from dpmsfs.fs.kernel_ops import KernelPassthroughOperations
from dpmsfs.fuseproto.session import IO_URING_MODES, Session

if TYPE_CHECKING:
    from dpmsfs.fs.mount import MountOptions

log = logging.getLogger(__name__)

WORKERS = 3
# Benchmarks set this to a file: FUSE requests per opcode are counted and written there
# about every 0.2 s (scripts/bench_workloads.py reads the difference per workload).
REQUEST_COUNTS_ENV = "DPMSFS_FUSE_REQUEST_COUNTS"
# Tests only: SIGKILL the daemon right after mount(2) and INIT, before it told the
# fail-open watchdog which mount is its own (the window the watchdog must cover).
KILL_AFTER_MOUNT_ENV = "DPMSFS_TEST_KILL_AFTER_MOUNT"
# Tests only: "setup" or "register" makes FUSE over io_uring fail at that step (the
# fallback to /dev/fuse must follow, never a failed mount).
URING_FAULT_ENV = "DPMSFS_TEST_URING_FAULT"
# Benchmarks only, experimental: "1" runs the io_uring ring threads as SCHED_IDLE
# (fuseproto/session.py says why; docs/design.md the risk).
RING_SCHED_IDLE_ENV = "DPMSFS_FUSE_RING_SCHED_IDLE"


def fuse_options(workdir: str, fuse_debug: bool) -> list[str]:
    return ["default_permissions", "allow_other"]


class LiveMount:
    """What a running kernel-layer mount exposes to its caller (tests, status)."""

    def __init__(self, session: Session, operations: KernelPassthroughOperations) -> None:
        self.session = session
        self.operations = operations

    @property
    def open_file_count(self) -> int:
        return self.operations.open_file_count

    def status(self) -> dict[str, object]:
        """The `fuse` section of the daemon's status report."""
        report: dict[str, object] = {"layer": "kernel"}
        if self.session.negotiated is not None:
            report.update(self.session.negotiated.as_dict())
            report["passthrough"] = self.operations.passthrough
        report["transport"] = self.session.transport
        report["transport_reason"] = self.session.transport_reason
        return report


async def write_request_counts(session: Session, path: str) -> None:
    while True:
        counts = dict(session.request_counts)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(counts, out)
        os.replace(tmp, path)
        await trio.sleep(0.2)


async def recapture_open_writers(
    operations: KernelPassthroughOperations, sink: ChangeSink, interval: float
) -> None:
    """Report files held open for writing again while they change (size or mtime)."""
    seen: dict[bytes, tuple[int, int]] = {}
    while True:
        await trio.sleep(interval)
        try:
            now = operations.open_writer_marks()
        except OSError:
            continue
        for path, mark in now.items():
            if seen.get(path) != mark:
                sink.record(ChangeKind.WRITE, path)
        seen = now


def serve(
    options: MountOptions,
    sink: ChangeSink | None,
    services: Sequence[Callable[[], Awaitable[None]]],
    on_ready: Callable[[Any], None] | None,
    handle_signals: bool,
    snapshots: SnapshotTree | None,
    before_unmount: Callable[[], Awaitable[None]] | None,
) -> None:
    from dpmsfs.fs.mount import check_fuse_available, check_workdir, run_session

    workdir = check_workdir(options.workdir)
    if options.fuse_io_uring not in IO_URING_MODES:
        raise UsageError(
            f"fuse_io_uring must be one of {', '.join(IO_URING_MODES)},"
            f" not {options.fuse_io_uring!r}"
        )
    check_fuse_available()
    os.umask(0)  # modes come from the caller (the kernel applied the caller's umask)
    if handle_signals:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    sink = sink or NullSink()
    root_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ops = KernelPassthroughOperations(
        root_fd, sink, fd_budget=options.fd_budget, snapshots=snapshots
    )
    session = Session(
        ops,
        str(workdir),
        fsname=f"dpmsfs:{workdir}",
        subtype="dpmsfs",
        options=fuse_options(str(workdir), options.fuse_debug),
        passthrough=options.passthrough,
        workers=WORKERS,
        io_uring=options.fuse_io_uring,
        uring_fault=os.environ.get(URING_FAULT_ENV) or None,
        ring_sched_idle=os.environ.get(RING_SCHED_IDLE_ENV) == "1",
    )
    ops.attach(session.backing_open, session.backing_close)
    # Started before mount(2): no instant at which a dead daemon leaves a dead mount.
    fail_open = watchdog.start(str(workdir))
    try:
        session.mount()
    except OSError as exc:
        fail_open.stop()
        session.close()
        ops.close()
        os.close(root_fd)
        raise UnavailableError(f"{workdir}: mount failed ({exc.strerror or exc})") from None
    if os.environ.get(KILL_AFTER_MOUNT_ENV) == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # tests: die in the window after mount(2)
    fail_open.arm()
    live = LiveMount(session, ops)
    log.info("mounted %s", workdir)

    async def fuse_main() -> None:
        await trio.to_thread.run_sync(session.join, abandon_on_cancel=True)
        if not session.running:
            return
        raise OSError(errno.EIO, "FUSE workers still running")

    def terminate() -> None:
        session.unmount()

    all_services = list(services)
    counts_path = os.environ.get(REQUEST_COUNTS_ENV)
    if counts_path:
        session.count_requests = True
        all_services.append(lambda: write_request_counts(session, counts_path))
    if options.open_writer_recapture_seconds > 0:
        interval = options.open_writer_recapture_seconds
        all_services.append(lambda: recapture_open_writers(ops, sink, interval))
        # Programs still writing through descriptors of a previous daemon's mount.
        all_services.append(
            lambda: old_writers.watch_old_writers(root_fd, str(workdir), sink, interval)
        )
    try:
        trio.run(
            run_session,
            all_services,
            (lambda: on_ready(live)) if on_ready else None,
            handle_signals,
            before_unmount,
            True,
            fuse_main,
            terminate,
        )
    finally:
        if session.running:
            session.unmount()
            session.join(10)
        session.close()
        ops.close()
        os.close(root_fd)
        fail_open.stop()  # it finds the mount gone and exits
        log.info("unmounted %s", workdir)
