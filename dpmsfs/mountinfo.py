"""Which directories are dpmsfs mounts, read from /proc/self/mountinfo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

FSTYPE = "fuse.dpmsfs"
# The read-only snapshot view, mounted by its own process on WORKDIR/.snapshots.
VIEW_FSTYPE = "fuse.dpmsfs-snapshots"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class Mount(NamedTuple):
    mount_id: int
    device_minor: int  # for FUSE: the connection number in /sys/fs/fuse/connections
    mount_point: str
    fstype: str


def mount_table(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every mount, in mount order (later ones are on top of earlier ones)."""
    result = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            minor = int(fields[2].split(":")[1])
            result.append(Mount(int(fields[0]), minor, _unescape(fields[4]), fields[sep + 1]))
    return result


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, file system type) for every mount, in mount order."""
    return [(m.mount_point, m.fstype) for m in mount_table(mountinfo)]


def topmost(path: str) -> Mount | None:
    """The mount visible at `path` (an absolute, resolved path), if one is mounted there."""
    found = None
    for mount in mount_table():
        if mount.mount_point == path:
            found = mount
    return found


def is_dpmsfs_mount(path: str | os.PathLike[str], fstype: str = FSTYPE) -> bool:
    """True if the topmost mount at `path` is a dpmsfs mount (or the `fstype` given)."""
    target = str(Path(path).resolve())
    topmost = None
    for mount_point, mounted_type in mounts():
        if mount_point == target:
            topmost = mounted_type
    return topmost == fstype
