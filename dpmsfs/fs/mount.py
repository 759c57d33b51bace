"""Mount a work directory over itself and serve it until unmounted or signalled.

The real directory is opened (O_PATH) *before* the mount hides it, and every operation
is served relative to that descriptor, so programs keep their paths and the daemon
keeps reaching the real files underneath.

Fail-open: if the daemon dies (even by SIGKILL), our watchdog process (watchdog.py)
aborts the FUSE connection and detaches the mount, and the real directory shows
through again; `auto_unmount` (fusermount3's own watchdog) stays on as a second net.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from dpmsfs import mountinfo, sdnotify
from dpmsfs.browse.vfs import SnapshotTree
from dpmsfs.errors import BusyError, NotFoundError, UnavailableError, UsageError
from dpmsfs.fs import liveness, request_counts, syscalls, watchdog
from dpmsfs.fs.changes import ChangeSink
from dpmsfs.fs.operations import PassthroughOperations

log = logging.getLogger(__name__)

# Benchmarks set this to a file: FUSE requests per opcode are written there (both paths).
REQUEST_COUNTS_ENV = "DPMSFS_FUSE_REQUEST_COUNTS"

# A background service runs beside the FUSE loop (ingest, snapshots, sync, status).
Service = Callable[[], Awaitable[None]]


LIVE_FUSE_LAYERS = ("kernel", "pyfuse3")


def _env_live_fuse() -> str:
    """The live mount's FUSE layer; DPMSFS_LIVE_FUSE overrides (the test matrix)."""
    return os.environ.get("DPMSFS_LIVE_FUSE", "kernel")


def _env_fuse_io_uring() -> str:
    """auto|on|off; DPMSFS_FUSE_IO_URING overrides (the test matrix, benchmarks)."""
    return os.environ.get("DPMSFS_FUSE_IO_URING", "off").lower()


def _env_passthrough() -> bool:
    return os.environ.get("DPMSFS_PASSTHROUGH", "1").lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class MountOptions:
    workdir: Path
    fd_budget: int = 4096
    fuse_debug: bool = False
    # "kernel": our own FUSE layer (dpmsfs.fuseproto, kernel_mount.py); "pyfuse3": the
    # previous live path, kept selectable during the transition.
    live_fuse: str = field(default_factory=_env_live_fuse)
    passthrough: bool = field(default_factory=_env_passthrough)  # kernel layer only
    fuse_io_uring: str = field(default_factory=_env_fuse_io_uring)  # kernel layer only
    open_writer_recapture_seconds: float = 120.0


def check_workdir(path: str | os.PathLike[str]) -> Path:
    """Resolve and validate a work directory; raise a one-line error if unusable."""
    workdir = Path(path).absolute()
    try:
        st = os.stat(workdir)
    except FileNotFoundError:
        raise NotFoundError(f"{workdir}: no such directory") from None
    except OSError as exc:
        raise UsageError(f"{workdir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{workdir}: not a directory")
    workdir = workdir.resolve()
    if mountinfo.is_dpmsfs_mount(workdir):
        raise BusyError(f"{workdir}: already a dpmsfs mount")
    return workdir


def check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UnavailableError("FUSE is unavailable: /dev/fuse does not exist (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UnavailableError("FUSE is unavailable: no permission to open /dev/fuse")


def mount_options(workdir: Path, fuse_debug: bool) -> set[str]:
    options = {
        f"fsname=dpmsfs:{workdir}",
        "subtype=dpmsfs",
        "default_permissions",  # the kernel checks permissions, exactly as native
        "allow_other",  # the equipment account is not the daemon's (root)
        "auto_unmount",  # fail open when the daemon dies
        "suid",  # keep native semantics: set-id programs in the work directory
        "dev",
    }
    if fuse_debug:
        options.add("debug")
    return options


def serve(
    options: MountOptions,
    sink: ChangeSink | None = None,
    services: Sequence[Service] = (),
    on_ready: Callable[[Any], None] | None = None,
    handle_signals: bool = True,
    snapshots: SnapshotTree | None = None,
    before_unmount: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Mount, serve until unmounted or SIGTERM/SIGINT, then unmount. Blocks.

    `handle_signals=False` lets tests serve from a thread (signals need the main one).
    `before_unmount` runs on a signal while this mount still serves requests (the
    snapshot view, mounted inside this one, is unmounted there).
    """
    if options.live_fuse == "kernel":
        from dpmsfs.fs import kernel_mount

        kernel_mount.serve(
            options, sink, services, on_ready, handle_signals, snapshots, before_unmount
        )
        return
    if options.live_fuse != "pyfuse3":
        raise UsageError(f"live_fuse must be one of {', '.join(LIVE_FUSE_LAYERS)}")
    workdir = check_workdir(options.workdir)
    check_fuse_available()
    os.umask(0)  # modes come from the caller (the kernel applied the caller's umask)
    if handle_signals:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    root_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ops = PassthroughOperations(root_fd, sink, fd_budget=options.fd_budget, snapshots=snapshots)
    counts_path = os.environ.get(REQUEST_COUNTS_ENV)
    if counts_path:  # benchmarks only: nothing is wrapped otherwise
        counts = request_counts.instrument(ops)
        services = [*services, lambda: request_counts.write_counts(counts, counts_path)]
    fail_open = watchdog.start(str(workdir))  # before mounting: no unguarded window
    try:
        pyfuse3.init(ops, str(workdir), mount_options(workdir, options.fuse_debug))
    except RuntimeError as exc:
        fail_open.stop()
        os.close(root_fd)
        raise UnavailableError(f"{workdir}: mount failed ({exc})") from None
    fail_open.arm()
    _allow_setid_and_devices(workdir)
    log.info("mounted %s", workdir)
    ping_interval = liveness.watchdog_interval()
    if ping_interval is not None:
        services = [*services, lambda: liveness.ping_while_serving(workdir, ping_interval)]
    unmounted_by_us = False
    try:
        unmounted_by_us = trio.run(
            run_session,
            services,
            (lambda: on_ready(ops)) if on_ready else None,
            handle_signals,
            before_unmount,
        )
    finally:
        pyfuse3.close(unmount=unmounted_by_us)
        ops.close()
        os.close(root_fd)
        fail_open.stop()  # it finds the mount gone and exits
        log.info("unmounted %s", workdir)


def _allow_setid_and_devices(workdir: Path) -> None:
    """Clear the nosuid and nodev flags fusermount3 always sets.

    With auto_unmount, libfuse mounts through fusermount3, and libfuse passes it only the
    flags that are on: "suid" and "dev" are dropped and fusermount3's defaults (nosuid,
    nodev) win, so set-id programs and device files in the work directory would not work
    as they do natively. Root may change the flags of the mount afterwards; no request
    reaches the (not yet running) FUSE loop, as only the mount itself is looked up.
    """
    try:
        syscalls.set_mount_flags(os.fsencode(workdir), syscalls.MS_RELATIME)
    except OSError as exc:
        log.warning("%s: set-id programs and device files stay disabled: %s", workdir, exc)


async def run_session(
    services: Sequence[Service],
    on_ready: Callable[[], None] | None,
    handle_signals: bool,
    before_unmount: Callable[[], Awaitable[None]] | None = None,
    notify_ready: bool = True,
    fuse_main: Callable[[], Awaitable[None]] | None = None,
    terminate: Callable[[], None] | None = None,
) -> bool:
    """Run the FUSE loop and the services; True if a signal asked us to stop.

    Both mounts use it: the work directory's and the snapshot view's (which must not
    tell systemd it is ready: only the daemon, the service's main process, does).
    `fuse_main` / `terminate` serve and end another FUSE layer (default: pyfuse3's)."""
    main = fuse_main or pyfuse3.main
    end = terminate or pyfuse3.terminate
    stopped_by_signal = False

    async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal stopped_by_signal
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                stopped_by_signal = True
                if before_unmount is not None:
                    await before_unmount()
                end()
                return

    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(watch_signals)
        for service in services:
            nursery.start_soon(service)
        if on_ready is not None:
            on_ready()
        if notify_ready:
            sdnotify.notify("READY=1")
        try:
            await main()
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                raise
        nursery.cancel_scope.cancel()
    return stopped_by_signal
