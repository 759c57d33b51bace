"""FUSE requests per opcode on the pyfuse3 path, for benchmarks only.

The kernel layer counts in its session (fuseproto/session.py); pyfuse3 gives no such
hook, so when scripts/bench_workloads.py sets DPMSFS_FUSE_REQUEST_COUNTS the daemon
replaces each handler of its Operations *instance* by a counting one (pyfuse3 looks the
handlers up on the instance). Nothing is wrapped when the variable is unset: zero cost
in production. Names are the kernel's opcode names, so both paths read alike; the
keys "us NAME" hold the microseconds spent in each handler.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

# pyfuse3 handler name -> kernel opcode name (READDIR stands for READDIRPLUS there).
HANDLERS = {
    "lookup": "LOOKUP", "forget": "FORGET", "getattr": "GETATTR", "setattr": "SETATTR",
    "readlink": "READLINK", "mknod": "MKNOD", "mkdir": "MKDIR", "unlink": "UNLINK",
    "rmdir": "RMDIR", "symlink": "SYMLINK", "rename": "RENAME", "link": "LINK",
    "open": "OPEN", "read": "READ", "write": "WRITE", "statfs": "STATFS",
    "release": "RELEASE", "fsync": "FSYNC", "setxattr": "SETXATTR",
    "getxattr": "GETXATTR", "listxattr": "LISTXATTR", "removexattr": "REMOVEXATTR",
    "flush": "FLUSH", "opendir": "OPENDIR", "readdir": "READDIR",
    "releasedir": "RELEASEDIR", "fsyncdir": "FSYNCDIR", "access": "ACCESS",
    "create": "CREATE",
}  # fmt: skip


def instrument(operations: Any) -> dict[str, int]:
    """Wrap every handler `operations` has; returns the live counts table."""
    counts: dict[str, int] = {}
    for attribute, name in HANDLERS.items():
        handler = getattr(operations, attribute, None)
        if handler is not None:
            setattr(operations, attribute, _counting(handler, name, counts))
    return counts


def _counting(
    handler: Callable[..., Awaitable[Any]], name: str, counts: dict[str, int]
) -> Callable[..., Awaitable[Any]]:
    key = f"us {name}"

    @functools.wraps(handler)
    async def counted(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await handler(*args, **kwargs)
        finally:  # one trio thread: no lock needed
            counts[name] = counts.get(name, 0) + 1
            counts[key] = counts.get(key, 0) + int((time.perf_counter() - started) * 1e6)

    return counted


async def write_counts(counts: dict[str, int], path: str) -> None:
    """About every 0.2 s, the totals so far (the benchmark reads differences)."""
    while True:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(dict(counts), out)
        os.replace(tmp, path)
        await trio.sleep(0.2)
