"""Background work must yield to the equipment software: lower CPU and I/O priority.

Used around ingest work on worker threads (Linux scheduling and I/O priorities are per
thread): nice 10 and the lowest best-effort I/O priority, so the FUSE thread and the
equipment's own processes win the CPU and the disk while an import runs. Priorities
are put back afterwards: trio's worker threads are shared, and the next job on the
same thread may be an fsync the equipment software is waiting for.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

NICE = 10
_SYS_IOPRIO_SET = 251  # x86_64 only; elsewhere the I/O priority is left alone
_SYS_IOPRIO_GET = 252
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_LOWEST_BE = (2 << 13) | 7  # best-effort class, level 7
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_HAS_IOPRIO = os.uname().machine == "x86_64"


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Run the body of this thread at background priority."""
    tid = threading.get_native_id()
    old_nice = os.getpriority(os.PRIO_PROCESS, tid)
    old_io = _libc.syscall(_SYS_IOPRIO_GET, _IOPRIO_WHO_PROCESS, tid) if _HAS_IOPRIO else -1
    _set(tid, NICE, _IOPRIO_LOWEST_BE)
    try:
        yield
    finally:
        _set(tid, old_nice, old_io)


def _set(tid: int, nice: int, ioprio: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # raising priority back needs CAP_SYS_NICE: the daemon has it
        log.debug("setpriority(%d): %s", nice, exc)
    if not _HAS_IOPRIO or ioprio < 0:
        return
    if _libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, tid, ioprio) != 0:
        log.debug("ioprio_set: errno %d", ctypes.get_errno())
