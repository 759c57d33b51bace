"""Fail-open watchdog: if the daemon dies, abort its FUSE connection and detach the mount.

`auto_unmount` alone is not enough: fusermount3's (3.14) watchdog unmounts only when
opening the mount point fails with ENOTCONN, and when the daemon is SIGKILLed its
check races with the kernel aborting the connection (measured: 8-28% of kills left a
dead mount, "Transport endpoint is not connected", until someone ran fusermount).

This watchdog is a small separate process started *before* mounting. It holds the
read end of a pipe whose write end only the daemon holds: end of file means the daemon
is gone, however it died. Once mounted, the daemon writes the mount's identity (mount
id and FUSE connection number) into the pipe. At end of file, if the mount it was told
about (identified by its mount id, so a remount by a restarted daemon is never touched)
is still there, it aborts the FUSE connection (/sys/fs/fuse/connections/N/abort, which
fails every pending and future request instead of hanging) and detaches the mount
(MNT_DETACH): the real directory shows through again.

Why before: a watchdog started after mount(2) leaves a window (the process start) in
which a kill -9 of the daemon leaves a dead mount ("Transport endpoint is not
connected") that nobody detaches. Started before, the watchdog also knows which mounts
were at the mount point already (argv); if the daemon dies after mount(2) but before
it could write the identity, the dpmsfs mount on top that was not there before is
the daemon's own, and is detached the same way. So no instant is left at which a dead
daemon leaves a dead mount behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from dpmsfs.mountinfo import FSTYPE, Mount, mount_table, topmost

log = logging.getLogger(__name__)

MNT_DETACH = 2
FUSECTL = Path("/sys/fs/fuse/connections")


def mount_identity(mount_point: str, fstype: str = FSTYPE) -> tuple[int, int] | None:
    """(mount id, FUSE connection number) of the dpmsfs mount on top at `mount_point`."""
    mount = topmost(mount_point)
    if mount is None or mount.fstype != fstype:
        return None
    return mount.mount_id, mount.device_minor


class Watchdog:
    """The daemon's side: the pipe's write end and the watchdog process."""

    def __init__(
        self, mount_point: str, fstype: str, write_fd: int, process: subprocess.Popen[bytes]
    ) -> None:
        self.mount_point = mount_point
        self.fstype = fstype
        self.write_fd = write_fd
        self.process = process

    def arm(self) -> bool:
        """Tell the watchdog which mount is ours, right after mount(2) returned."""
        identity = mount_identity(self.mount_point, self.fstype)
        if identity is None:
            log.warning("no dpmsfs mount found at %s after mounting", self.mount_point)
            return False
        os.write(self.write_fd, b"%d %d\n" % identity)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """After a clean unmount: the watchdog sees end of file, no mount, and exits."""
        os.close(self.write_fd)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("fail-open watchdog %d did not exit; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()


def start(mount_point: str, fstype: str = FSTYPE) -> Watchdog:
    """Start the watchdog for the mount about to be made at `mount_point`; call
    `Watchdog.arm()` once mount(2) has returned."""
    before = ",".join(str(m.mount_id) for m in mount_table() if m.mount_point == mount_point)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.fs.watchdog", mount_point, fstype, before or "-",
             str(read_fd)],
            pass_fds=(read_fd,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return Watchdog(mount_point, fstype, write_fd, process)


def detach(mount_point: str, mount_id: int, connection: int, fstype: str = FSTYPE) -> bool:
    """Abort the FUSE connection of a dead mount and detach it; False if it was gone."""
    identity = mount_identity(mount_point, fstype)
    if identity is None or identity[0] != mount_id:
        return False  # unmounted cleanly, or already replaced by a new mount
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    abort = Path(f"/sys/fs/fuse/connections/{connection}/abort")
    if not abort.parent.exists() and FUSECTL.is_dir():
        # fusectl is not mounted on every system (it is not on these tools' images).
        libc.mount(b"fusectl", bytes(FUSECTL), b"fusectl", 0, None)
    try:
        abort.write_text("1")  # fails every request still waiting: no process hangs
    except OSError:
        pass  # connection already gone; detaching is what matters
    if libc.umount2(os.fsencode(mount_point), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if mount_identity(mount_point, fstype) == identity:
            print(f"dpmsfs watchdog: cannot detach {mount_point}: {os.strerror(err)}",
                  file=sys.stderr)  # fmt: skip
            return False
    return True


def unannounced_mount(mount_point: str, fstype: str, before: set[int]) -> Mount | None:
    """The daemon's mount when it died before telling us: the topmost mount of our type
    at `mount_point` that was not there when the watchdog was started."""
    mount = topmost(mount_point)
    if mount is None or mount.fstype != fstype or mount.mount_id in before:
        return None
    return mount


def main(argv: list[str]) -> int:
    mount_point, fstype, before_arg, fd = argv[0], argv[1], argv[2], int(argv[3])
    before = {int(m) for m in before_arg.split(",") if m.isdigit()}
    os.chdir("/")  # never keep the mount busy
    told = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        told += chunk
    if told.strip():
        mount_id, connection = (int(field) for field in told.split()[:2])
    else:
        mount = unannounced_mount(mount_point, fstype, before)
        if mount is None:
            return 0  # the daemon died before mounting, or its mount failed
        mount_id, connection = mount.mount_id, mount.device_minor
    if detach(mount_point, mount_id, connection, fstype):
        print(f"dpmsfs watchdog: daemon gone, detached {mount_point}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
