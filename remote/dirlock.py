"""An exclusive lock on a server data directory: `serve` and `prune` never run together.

`DIR/lock` is locked with flock (POSIX) or msvcrt.locking (Windows) for the process's
lifetime; the kernel drops it when the process dies, so a kill -9 never leaves a stale
lock. `verify` takes no lock (it only moves corrupt files aside and may run beside serve).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


class DirectoryBusy(Exception):
    """Another process holds the data directory's lock."""


class DirLock:
    def __init__(self, root: Path) -> None:
        self.path = root / "lock"
        self._file: IO[bytes] | None = None

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")  # noqa: SIM115 - held until release()
        try:
            if os.name == "nt":
                import msvcrt

                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise DirectoryBusy(
                f"{self.path.parent} is in use by another dpmsfs-server (serve or prune)"
            ) from None
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
