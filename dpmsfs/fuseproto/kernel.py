"""The kernel side of a session: /dev/fuse, mount(2), umount2(2) and the ioctls.

We mount with mount(2) and `fd=N` ourselves (the daemon runs as root) rather than
through fusermount3: the mount flags are then exactly ours (fusermount3 always adds
nosuid and nodev), and no helper process or socket stands between us and the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import stat
import struct

from dpmsfs.fuseproto import abi

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_RELATIME = 1 << 21
MNT_DETACH = 2
FUSECTL = "/sys/fs/fuse/connections"


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def open_device() -> int:
    return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)


def mount(
    device_fd: int,
    mount_point: str,
    fsname: str,
    subtype: str,
    options: list[str],
    flags: int = MS_RELATIME,
) -> None:
    """mount(2) a FUSE file system served on `device_fd` over `mount_point`."""
    st = os.stat(mount_point)
    data = ",".join(
        [
            f"fd={device_fd}",
            f"rootmode={stat.S_IFMT(st.st_mode):o}",
            f"user_id={os.getuid()}",
            f"group_id={os.getgid()}",
            *options,
        ]
    )
    _check(
        _mount(
            os.fsencode(fsname), os.fsencode(mount_point), os.fsencode(f"fuse.{subtype}"),
            flags, os.fsencode(data),
        ),
        f"mount {mount_point}",
    )  # fmt: skip


def unmount(mount_point: str, lazy: bool = True) -> None:
    _check(_umount2(os.fsencode(mount_point), MNT_DETACH if lazy else 0), f"umount {mount_point}")


def clone_device(device_fd: int) -> int:
    """A second descriptor on the same connection (FUSE_DEV_IOC_CLONE): a worker reading
    it gets its own request queue position and replies on it."""
    fd = open_device()
    try:
        fcntl.ioctl(fd, abi.DEV_IOC_CLONE, struct.pack("<I", device_fd))
    except OSError:
        os.close(fd)
        raise
    return fd


def backing_open(device_fd: int, file_fd: int) -> int:
    """Register an open file for passthrough; returns its backing id (CAP_SYS_ADMIN)."""
    buf = bytearray(abi.BACKING_MAP.pack(file_fd, 0, 0))
    return int(fcntl.ioctl(device_fd, abi.DEV_IOC_BACKING_OPEN, buf, True))


def backing_close(device_fd: int, backing_id: int) -> None:
    buf = bytearray(struct.pack("<I", backing_id))
    fcntl.ioctl(device_fd, abi.DEV_IOC_BACKING_CLOSE, buf, True)


def abort_connection(connection: int) -> bool:
    """Fail every pending and future request of a connection (its readers get ENODEV)."""
    try:
        with open(f"{FUSECTL}/{connection}/abort", "w") as control:
            control.write("1")
    except OSError:
        return False
    return True
