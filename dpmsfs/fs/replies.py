"""What every FUSE handler of dpmsfs shares: error translation and attribute replies.

Both mounts use these: the passthrough of the work directory (operations.py) and the
read-only snapshot view (snapshot_ops.py).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

log = logging.getLogger(__name__)

CACHE_TIMEOUT = 3600.0

P = ParamSpec("P")
R = TypeVar("R")


def translate_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map OSError to FUSEError; log and return EIO for anything unexpected.

    pyfuse3 lets any other exception end the main loop, which would take the whole
    mount down for one bad request: never allowed to happen.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def attributes(
    ino: int,
    mode: int,
    nlink: int,
    uid: int,
    gid: int,
    rdev: int,
    size: int,
    blksize: int,
    blocks: int,
    atime_ns: int,
    mtime_ns: int,
    ctime_ns: int,
) -> pyfuse3.EntryAttributes:
    """Entry attributes the kernel may cache for CACHE_TIMEOUT (entry and attributes)."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = CACHE_TIMEOUT
    entry.attr_timeout = CACHE_TIMEOUT
    entry.st_mode = mode
    entry.st_nlink = nlink
    entry.st_uid = uid
    entry.st_gid = gid
    entry.st_rdev = rdev
    entry.st_size = size
    entry.st_blksize = blksize
    entry.st_blocks = blocks
    entry.st_atime_ns = atime_ns
    entry.st_mtime_ns = mtime_ns
    entry.st_ctime_ns = ctime_ns
    return entry
