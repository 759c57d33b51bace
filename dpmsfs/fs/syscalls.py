"""The few Linux system calls the passthrough needs that `os` does not offer.

`renameat2` (RENAME_NOREPLACE / RENAME_EXCHANGE), `utimensat` with UTIME_NOW and
UTIME_OMIT, and `fchownat` with AT_EMPTY_PATH (to act on O_PATH descriptors of
symlinks and orphaned files). Called through ctypes with `use_errno`, so failures
surface as `OSError` exactly like the `os` functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MS_REMOUNT = 32
MS_BIND = 4096
MS_RELATIME = 1 << 21

_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int

_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_fchownat.restype = ctypes.c_int

_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_mount.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int


def _raise_errno(name: bytes | None = None) -> None:
    err = ctypes.get_errno()
    if name is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), os.fsdecode(name))


def renameat2(old_dir_fd: int, old: bytes, new_dir_fd: int, new: bytes, flags: int) -> None:
    """rename(2) relative to directory descriptors, with RENAME_* flags."""
    if _renameat2(old_dir_fd, old, new_dir_fd, new, flags) != 0:
        _raise_errno(old)


def fchownat(dir_fd: int, name: bytes, uid: int, gid: int, flags: int) -> None:
    """chown relative to a descriptor; -1 keeps the uid or gid unchanged."""
    if _fchownat(dir_fd, name, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags) != 0:
        _raise_errno(name or None)


def _timespec(ns: int | None, now: bool) -> _Timespec:
    if now:
        return _Timespec(0, UTIME_NOW)
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    sec, nsec = divmod(ns, 1_000_000_000)
    return _Timespec(sec, nsec)


def utimensat(
    dir_fd: int,
    name: bytes,
    atime_ns: int | None,
    mtime_ns: int | None,
    flags: int,
    *,
    atime_now: bool = False,
    mtime_now: bool = False,
) -> None:
    """Set times; a time of None is left unchanged (UTIME_OMIT), *_now uses UTIME_NOW."""
    times = (_Timespec * 2)(_timespec(atime_ns, atime_now), _timespec(mtime_ns, mtime_now))
    if _utimensat(dir_fd, name, times, flags) != 0:
        _raise_errno(name or None)


def set_mount_flags(target: bytes, flags: int) -> None:
    """Replace the per-mount flags (nosuid, nodev, noexec, ro, atime) of the mount at
    `target` by `flags` (MS_REMOUNT | MS_BIND: the file system itself is untouched)."""
    if _mount(None, target, None, MS_REMOUNT | MS_BIND | flags, None) != 0:
        _raise_errno(target)


_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with every mode (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE,
    INSERT_RANGE): os.posix_fallocate has no mode."""
    if _fallocate(fd, mode, offset, length) != 0:
        _raise_errno()
