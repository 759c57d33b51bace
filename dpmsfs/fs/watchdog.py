"""Fail-open watchdog: if the daemon dies, abort its FUSE connection and detach the mount.

`auto_unmount` alone is not enough: fusermount3's (3.14) watchdog unmounts only when
opening the mount point fails with ENOTCONN, and when the daemon is SIGKILLed its
check races with the kernel aborting the connection (measured: 8-28% of kills left a
dead mount, "Transport endpoint is not connected", until someone ran fusermount).

This watchdog is a small separate process started right after mounting. It holds the
read end of a pipe whose write end only the daemon holds: end of file means the daemon
is gone, however it died. Then, if the mount it was started for (identified by its
mount id, so a remount by a restarted daemon is never touched) is still there, it
aborts the FUSE connection (/sys/fs/fuse/connections/N/abort, which fails every
pending and future request instead of hanging) and detaches the mount (MNT_DETACH):
the real directory shows through again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from dpmsfs.mountinfo import FSTYPE, topmost

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

    def __init__(self, write_fd: int, process: subprocess.Popen[bytes]) -> None:
        self.write_fd = write_fd
        self.process = process

    def stop(self, timeout: float = 5.0) -> None:
        """After a clean unmount: the watchdog sees end of file, no mount, and exits."""
        os.close(self.write_fd)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("fail-open watchdog %d did not exit; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()


def start(mount_point: str) -> Watchdog | None:
    """Start the watchdog for the mount just made at `mount_point`."""
    identity = mount_identity(mount_point)
    if identity is None:
        log.warning("no dpmsfs mount found at %s: no fail-open watchdog", mount_point)
        return None
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.fs.watchdog", mount_point, str(identity[0]),
             str(identity[1]), str(read_fd)],
            pass_fds=(read_fd,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return Watchdog(write_fd, process)


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


def main(argv: list[str]) -> int:
    mount_point, mount_id, connection, fd = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    os.chdir("/")  # never keep the mount busy
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
    if detach(mount_point, mount_id, connection):
        print(f"dpmsfs watchdog: daemon gone, detached {mount_point}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
