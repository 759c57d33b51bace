"""Reply payloads the kernel expects, built from plain Python values.

The upper layer returns these bytes from its handlers; the session adds the header.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from dpmsfs.fuseproto import abi


@dataclass(slots=True)
class Attr:
    """The attributes of one inode as FUSE carries them (fuse_attr)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result, ino: int | None = None) -> Attr:
        return cls(
            st.st_ino if ino is None else ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip

    def pack(self) -> bytes:
        a, m, c = self.atime_ns, self.mtime_ns, self.ctime_ns
        return abi.ATTR.pack(
            self.ino, self.size, self.blocks,
            a // 1_000_000_000, m // 1_000_000_000, c // 1_000_000_000,
            a % 1_000_000_000, m % 1_000_000_000, c % 1_000_000_000,
            self.mode, self.nlink, self.uid, self.gid, self.rdev & 0xFFFFFFFF,
            self.blksize, 0,
        )  # fmt: skip


def _split(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1_000_000_000)


def entry(nodeid: int, attr: Attr, entry_timeout: float, attr_timeout: float) -> bytes:
    """fuse_entry_out: LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (and the first half of CREATE)."""
    e_sec, e_nsec = _split(entry_timeout)
    a_sec, a_nsec = _split(attr_timeout)
    return abi.ENTRY_OUT_HEAD.pack(nodeid, 0, e_sec, a_sec, e_nsec, a_nsec) + attr.pack()


def negative_entry(timeout: float) -> bytes:
    """A LOOKUP answer "no such name" the kernel caches for `timeout` seconds."""
    e_sec, e_nsec = _split(timeout)
    return abi.ENTRY_OUT_HEAD.pack(0, 0, e_sec, 0, e_nsec, 0) + bytes(abi.ATTR.size)


def attr_out(attr: Attr, timeout: float) -> bytes:
    sec, nsec = _split(timeout)
    return abi.ATTR_OUT_HEAD.pack(sec, nsec, 0) + attr.pack()


def open_out(fh: int, open_flags: int = 0, backing_id: int = 0) -> bytes:
    return abi.OPEN_OUT.pack(fh, open_flags, backing_id)


def write_out(size: int) -> bytes:
    return abi.WRITE_OUT.pack(size, 0)


def statfs_out(st: os.statvfs_result) -> bytes:
    return abi.KSTATFS.pack(
        st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
        st.f_bsize, st.f_namemax, st.f_frsize, 0,
    )  # fmt: skip


def xattr_size(size: int) -> bytes:
    """GETXATTR/LISTXATTR asked with size 0: how big the value would be."""
    return abi.GETXATTR_OUT.pack(size, 0)


def lseek_out(offset: int) -> bytes:
    return abi.LSEEK_OUT.pack(offset)


class DirentBuffer:
    """READDIR / READDIRPLUS reply of at most `size` bytes, filled entry by entry."""

    __slots__ = ("_parts", "_plus", "_size", "_used")

    def __init__(self, size: int, plus: bool) -> None:
        self._size = size
        self._plus = plus
        self._parts: list[bytes] = []
        self._used = 0

    def add(self, name: bytes, next_offset: int, attr: Attr, entry_bytes: bytes | None) -> bool:
        """Append one entry; False (nothing added) when it does not fit.

        `entry_bytes` is the entry_out of READDIRPLUS (None: nodeid 0, no link made)."""
        namelen = len(name)
        padded = (namelen + 7) & ~7
        record = abi.DIRENT_HEAD.size + padded
        if self._plus:
            record += abi.ENTRY_OUT_SIZE
        if self._used + record > self._size:
            return False
        dtype = stat.S_IFMT(attr.mode) >> 12
        if self._plus:
            self._parts.append(
                entry_bytes if entry_bytes is not None else bytes(abi.ENTRY_OUT_SIZE)
            )
        self._parts.append(abi.DIRENT_HEAD.pack(attr.ino, next_offset, namelen, dtype))
        self._parts.append(name + bytes(padded - namelen))
        self._used += record
        return True

    def payload(self) -> bytes:
        return b"".join(self._parts)
