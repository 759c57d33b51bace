"""The snapshot view's own mount: a second FUSE connection on WORKDIR/.snapshots.

Why a second connection, served by a second process:
* `ls -l` asks for two extended attributes of every entry, and FUSE cannot cache
  them; the only way to stop those round trips is to answer ENOSYS, which the kernel
  applies to a whole connection. The work directory's own mount must keep passing
  extended attributes through, so the view gets its own connection (1.7 s -> see
  docs/benchmarks.md for `ls -l` of 10,000 entries).
* pyfuse3 serves one session per process, hence a process.
* Browsing history (large reads, tree decoding) no longer competes for the GIL with
  the programs running from the work directory, and a fault in the view cannot take
  the work directory's mount down.

The daemon runs `SnapshotView` as one of its services: it starts the process, restarts
it if it dies (detaching the dead mount first), and stops it before the work directory
is unmounted. While the view is not mounted, the daemon's own mount still serves
`.snapshots` (operations.py delegates to the same SnapshotOperations), so browsing
works at every moment; only `ls -l` of huge directories is slower then.

Run by the daemon as `python -m dpmsfs.fs.snapshot_mount WORKDIR STORE`, with
`--server URL ... --tool ID --token-file FILE [--tls-ca FILE]` when the mount's
configuration names a server: chunks the local store lacks are then read from there
(browse/vfs.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
import trio

from dpmsfs.browse.source import RemoteSource
from dpmsfs.browse.vfs import SnapshotTree
from dpmsfs.fs import watchdog
from dpmsfs.fs.mount import Service, run_session
from dpmsfs.fs.snapshot_ops import SnapshotOperations
from dpmsfs.mountinfo import VIEW_FSTYPE, topmost

log = logging.getLogger(__name__)

VIEW_NAME = ".snapshots"
STOP_TIMEOUT = 10.0  # seconds the view process gets to unmount and exit
RESTART_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)  # after each crash in a row
STABLE_AFTER = 60.0  # a view that ran this long resets the delays
READ_AHEAD_KIB = 1024  # the kernel's read-ahead for the view (default 128 KiB)


def view_mount_point(workdir: Path) -> str:
    return os.path.join(os.fspath(workdir), VIEW_NAME)


def view_mounted(workdir: Path) -> bool:
    """Whether the view is mounted. Reads /proc only: never a request to either mount,
    so it is safe on the daemon's FUSE thread."""
    mount = topmost(view_mount_point(workdir))
    return mount is not None and mount.fstype == VIEW_FSTYPE


def view_mount_options(workdir: Path) -> set[str]:
    # fusermount3's defaults (nosuid, nodev) stay: nothing in history should run set-id.
    return {
        f"fsname=dpmsfs-snapshots:{workdir}",
        "subtype=dpmsfs-snapshots",
        "ro",  # the kernel refuses every change with EROFS before asking us
        "default_permissions",
        "allow_other",
        "auto_unmount",
    }


def detach_dead_view(workdir: Path) -> bool:
    """Abort and detach a view mount whose process is gone. Resolves the path through
    the work directory's mount: call it off that mount's FUSE thread."""
    mount_point = view_mount_point(workdir)
    mount = topmost(mount_point)
    if mount is None or mount.fstype != VIEW_FSTYPE:
        return False
    return watchdog.detach(mount_point, mount.mount_id, mount.device_minor, VIEW_FSTYPE)


# --- the daemon's side ----------------------------------------------------------------


class SnapshotView:
    """Start, watch and stop the view process (a service of the daemon)."""

    def __init__(
        self, workdir: Path, store: Path, log_level: str = "INFO", server_args: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.store = store
        self.log_level = log_level
        self.server_args = list(server_args)  # from server_arguments()
        self.restarts = 0
        self._process: trio.Process | None = None
        self._stopping = False

    def state(self) -> str:
        """One line for `dpmsfs status`."""
        if view_mounted(self.workdir) and self._process is not None:
            return f"mounted (process {self._process.pid}, {self.restarts} restarts)"
        if self._stopping:
            return "stopped"
        return "not mounted: served by the work directory's mount (slower ls -l)"

    async def run(self) -> None:
        delays = iter(RESTART_DELAYS)
        while not self._stopping:
            started = trio.current_time()
            code = await self._run_once()
            if self._stopping:
                return
            if code == 0:
                log.info(
                    "snapshot view on %s unmounted from outside; it stays so until the "
                    "daemon restarts (.snapshots is still served)",
                    self.workdir,
                )
                return
            if trio.current_time() - started >= STABLE_AFTER:
                delays = iter(RESTART_DELAYS)
            delay = next(delays, RESTART_DELAYS[-1])
            log.error("snapshot view process exited with status %s; restarting in %.0f s "
                      "(.snapshots is served by the work directory's mount meanwhile)",
                      code, delay)  # fmt: skip
            await trio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> int:
        # The view learns that the daemon is gone from end of file on this pipe: its
        # write end lives only in the daemon (close-on-exec). PR_SET_PDEATHSIG would not
        # do: it fires when the *thread* that started the child exits, and trio starts
        # processes from worker threads that end when idle.
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        command = [sys.executable, "-m", "dpmsfs.fs.snapshot_mount", "--log-level",
                   self.log_level, "--daemon-fd", str(read_fd), *self.server_args,
                   os.fspath(self.workdir), os.fspath(self.store)]  # fmt: skip
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, pass_fds=(read_fd,)
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._process = process
        try:
            code = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._end(process)
                self._process = None
                os.close(write_fd)
        return code

    async def stop(self) -> None:
        """Unmount the view and end its process (before the work directory unmounts)."""
        self._stopping = True
        process = self._process
        if process is not None:
            with trio.CancelScope(shield=True):
                await self._end(process)

    async def _end(self, process: trio.Process) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # it unmounts itself, then exits
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                log.warning("snapshot view process %d did not stop; killing it", process.pid)
                process.kill()
                await process.wait()
        if view_mounted(self.workdir):
            await trio.to_thread.run_sync(detach_dead_view, self.workdir)


# --- the view process -----------------------------------------------------------------


async def _after_init(ops: SnapshotOperations, mount_point: str) -> None:
    """Once the kernel has the INIT reply (which sets the read-ahead), raise it."""
    with trio.move_on_after(30):
        while not ops.init_done:
            await trio.sleep(0.01)
        await trio.sleep(0.01)  # the reply is written when init() returns
        await trio.to_thread.run_sync(_raise_read_ahead, mount_point)


async def _watch_daemon(fd: int) -> None:
    """End the session when the daemon is gone (end of file on its pipe), however it
    died; its fail-open watchdog detaches the work directory and this view with it."""
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            if not os.read(fd, 1):
                break
        except BlockingIOError:
            continue
    log.warning("the dpmsfs daemon is gone: ending the snapshot view")
    pyfuse3.terminate()


async def _serve(daemon_fd: int | None, after_init: Service) -> bool:
    """Serve until unmounted (False) or signalled (True: unmount ourselves)."""
    services = [after_init]
    if daemon_fd is not None:
        services.append(functools.partial(_watch_daemon, daemon_fd))
    return await run_session(services, None, handle_signals=True, notify_ready=False)


def _raise_read_ahead(mount_point: str) -> None:
    """Read ahead 1 MiB instead of 128 KiB: fewer, larger FUSE reads of a chunk each
    (~1 MiB). Cold `cat` of 1 GiB from the view: 1.57 s instead of 1.76 s (medians of
    3, docs/benchmarks.md); 4 MiB was slower again (1.95 s)."""
    mount = topmost(mount_point)
    if mount is None:
        return
    knob = f"/sys/class/bdi/0:{mount.device_minor}/read_ahead_kb"
    try:
        with open(knob, "w") as f:
            f.write(str(READ_AHEAD_KIB))
    except OSError as exc:
        log.info("snapshot view: read-ahead stays at the default (%s: %s)", knob, exc)


def server_arguments(
    urls: Sequence[str], tool: str, token_file: Path | None, tls_ca: Path | None
) -> list[str]:
    """The view process's arguments naming the server (none without a server)."""
    if not urls or token_file is None:
        return []
    args = [f"--server={url}" for url in urls]
    args += [f"--tool={tool}", f"--token-file={token_file}"]
    return args + ([f"--tls-ca={tls_ca}"] if tls_ca else [])


SERVER_DEADLINE = 10.0  # seconds a read waits for an unanswering server before EIO


def _open_server(args: argparse.Namespace) -> RemoteSource | None:
    """The server for chunks missing locally, or None (then they stay EIO)."""
    if not args.server:
        return None
    from dpmsfs.browse.source import open_server
    from dpmsfs.errors import DpmsError

    try:
        return open_server(args.server, args.tool, args.token_file, args.tls_ca,
                           deadline=SERVER_DEADLINE)  # fmt: skip
    except DpmsError as exc:
        log.error("snapshot view: chunks missing locally will not be read from the server: %s",
                  exc)  # fmt: skip
        return None


def serve_view(
    workdir: Path,
    store_dir: Path,
    daemon_fd: int | None = None,
    remote: RemoteSource | None = None,
) -> int:
    from dpmsfs.store.errors import StoreError
    from dpmsfs.store.store import Store

    try:
        store = Store.open(os.fspath(store_dir), readonly=True)
    except StoreError as exc:
        log.error("snapshot view: cannot open store %s: %s", store_dir, exc)
        return 4
    try:
        ops = SnapshotOperations(SnapshotTree(store, remote), own_mount=True)
        mount_point = view_mount_point(workdir)
        try:
            pyfuse3.init(ops, mount_point, view_mount_options(workdir))
        except RuntimeError as exc:
            log.error("cannot mount the snapshot view on %s: %s", mount_point, exc)
            return 4
        log.info("snapshot view mounted on %s", mount_point)
        unmount = False
        try:
            unmount = trio.run(_serve, daemon_fd, lambda: _after_init(ops, mount_point))
        finally:
            pyfuse3.close(unmount=unmount)
            log.info("snapshot view on %s unmounted", mount_point)
    finally:
        store.close()
        if remote is not None:
            remote.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve WORKDIR/.snapshots (run by the daemon)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--daemon-fd", type=int, help="a pipe: end of file when the daemon dies")
    parser.add_argument("--server", action="append", help="server URL (repeated: the HA pair)")
    parser.add_argument("--tool", help="the tool's namespace on the server")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("store", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.chdir("/")  # never keep either mount busy
    return serve_view(args.workdir, args.store, args.daemon_fd, _open_server(args))


if __name__ == "__main__":
    sys.exit(main())
