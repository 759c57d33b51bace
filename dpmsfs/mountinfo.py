"""Which directories are dpmsfs mounts, read from /proc/self/mountinfo."""

from __future__ import annotations

import os
from pathlib import Path

FSTYPE = "fuse.dpmsfs"


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


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, file system type) for every mount, in mount order."""
    result = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            result.append((_unescape(fields[4]), fields[sep + 1]))
    return result


def is_dpmsfs_mount(path: str | os.PathLike[str]) -> bool:
    """True if the topmost mount at `path` is a dpmsfs mount."""
    target = str(Path(path).resolve())
    topmost = None
    for mount_point, fstype in mounts():
        if mount_point == target:
            topmost = fstype
    return topmost == FSTYPE
