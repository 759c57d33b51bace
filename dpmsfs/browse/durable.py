"""Making a finished restore durable with one call instead of one fsync per file.

A restore onto an empty disk is only done once its data is on that disk: the state file
that lets an interrupted restore resume (server_restore.py) must not disappear before the
files it vouches for are durable, or a power cut right after "done" could leave empty or
short files that nothing would ever fetch again. fsync per file gives that but costs a
journal commit per file (7-10 ms each on this machine's ext4: minutes for a whole tool);
`syncfs(2)` on the target's file system once at the end writes back everything dirty
there, data and metadata, in one pass the disk can order as it likes (docs/design.md,
"Durability of a restore").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
if _syncfs is not None:
    _syncfs.argtypes = [ctypes.c_int]
    _syncfs.restype = ctypes.c_int


def sync_filesystem(fd: int) -> None:
    """Write back and wait for everything dirty on the file system holding `fd`.

    Falls back to sync(2) (every file system: slower, never weaker) where the C library
    has no syncfs. Raises OSError if the kernel reports a write-back error: the restore
    then fails (and resumes) instead of reporting data it cannot vouch for."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a finished file back now, without waiting, and
    drop its clean pages from the cache (a restored file is not read again soon): the
    final `sync_filesystem` then has little left to wait for."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
