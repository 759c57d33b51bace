"""The one hook through which the mount reports what changed in the work directory.

The FUSE handlers call `ChangeSink.record()` after a change succeeded on the real
directory. The call must be cheap: no I/O, no locks that the store holds, no
allocation beyond the event itself. The versioning engine consumes the events (the
journal turns them into durable "this path needs capturing" records); tests use
`RecordingSink` to prove every kind of change is reported with the right path.

Paths are bytes relative to the work directory root (`b"pgm/a.cpp"`, `b""` for the
root itself), resolved at the moment of the change; a rename reports both paths so a
consumer can move whatever it had pending for the old one.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol


class ChangeKind(enum.Enum):
    CREATE = "create"  # a regular file was created (create/open O_CREAT)
    WRITE = "write"  # first write through an open handle (reported once per handle)
    CLOSE_WRITE = "close_write"  # the last reference to a handle that wrote was released
    TRUNCATE = "truncate"  # size changed by setattr
    SETATTR = "setattr"  # mode, owner or times changed
    RENAME = "rename"  # old_path moved to path
    EXCHANGE = "exchange"  # RENAME_EXCHANGE: old_path and path swapped
    LINK = "link"  # path is a new hard link to old_path
    UNLINK = "unlink"
    MKDIR = "mkdir"
    RMDIR = "rmdir"
    SYMLINK = "symlink"
    MKNOD = "mknod"  # FIFOs, sockets, device nodes
    XATTR = "xattr"  # an extended attribute was set or removed


class ChangeEvent(NamedTuple):
    kind: ChangeKind
    path: bytes
    old_path: bytes | None = None


class ChangeSink(Protocol):
    def record(self, kind: ChangeKind, path: bytes, old_path: bytes | None = None) -> None:
        """Note a change. Called on the FUSE loop: must not block or do I/O."""


class NullSink:
    """Discards events: a mount without versioning (benchmarks of the bare passthrough)."""

    def record(self, kind: ChangeKind, path: bytes, old_path: bytes | None = None) -> None:
        return None


class RecordingSink:
    """Keeps every event in a list, for tests."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    def record(self, kind: ChangeKind, path: bytes, old_path: bytes | None = None) -> None:
        self.events.append(ChangeEvent(kind, path, old_path))
