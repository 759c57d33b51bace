"""`.snapshots/` served by the live mount on our FUSE layer while the view is down.

The fallback path of the kernel-protocol live mount (kernel_ops.py): the same tree
(browse/vfs.py SnapshotTree) the view's own pyfuse3 mount serves, only the reply glue
differs (fuseproto payloads instead of pyfuse3 objects). Every inode and handle here is
>= VIRTUAL_BASE. Runs on the FUSE worker threads; SnapshotTree is thread-safe for that.
"""

from __future__ import annotations

import errno

from dpmsfs.browse.vfs import VIRTUAL_BASE, Attr, SnapshotTree
from dpmsfs.fs.replies import CACHE_TIMEOUT
from dpmsfs.fuseproto import replies
from dpmsfs.fuseproto.abi import FOPEN_KEEP_CACHE


def snapshot_attr(attr: Attr) -> replies.Attr:
    """Only a snapshot entry's mtime was captured: it stands for all three times."""
    return replies.Attr(
        attr.ino, attr.mode, attr.nlink, attr.uid, attr.gid, attr.rdev, attr.size,
        4096, (attr.size + 511) // 512, attr.mtime_ns, attr.mtime_ns, attr.mtime_ns,
    )  # fmt: skip


class KernelSnapshotView:
    """Translate FUSE requests on virtual inodes into SnapshotTree calls."""

    def __init__(self, tree: SnapshotTree) -> None:
        self.tree = tree
        self._dirs: dict[int, list[tuple[bytes, int]]] = {}
        self._next_dir = VIRTUAL_BASE

    def _entry(self, attr: Attr) -> bytes:
        return replies.entry(attr.ino, snapshot_attr(attr), CACHE_TIMEOUT, CACHE_TIMEOUT)

    def lookup_root(self) -> bytes:
        node = self.tree.root()
        self.tree.remember(node)
        return self._entry(self.tree.attr(node))

    def lookup(self, parent: int, name: bytes) -> bytes:
        node = self.tree.lookup(parent, name)
        self.tree.remember(node)
        return self._entry(self.tree.attr(node))

    def forget(self, ino: int, count: int) -> None:
        self.tree.forget(ino, count)

    def getattr(self, ino: int) -> bytes:
        return replies.attr_out(snapshot_attr(self.tree.getattr(ino)), CACHE_TIMEOUT)

    def readlink(self, ino: int) -> bytes:
        return self.tree.readlink(ino)

    def open(self, ino: int, flags: int) -> bytes:
        return replies.open_out(self.tree.open(ino, flags), FOPEN_KEEP_CACHE)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.tree.read(fh, offset, size)

    def release(self, fh: int) -> None:
        self.tree.release(fh)

    def opendir(self, ino: int) -> bytes:
        listing = list(self.tree.listdir(ino))
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = [(name, node.ino) for name, node in listing]
        return replies.open_out(fh)

    def readdir(self, fh: int, offset: int, size: int, plus: bool) -> bytes:
        try:
            entries = self._dirs[fh]
        except KeyError:
            raise OSError(errno.EBADF, "unknown directory handle") from None
        buffer = replies.DirentBuffer(size, plus)
        for index in range(offset, len(entries)):
            name, ino = entries[index]
            try:
                attr = self.tree.getattr(ino)
            except OSError:
                continue  # forgotten meanwhile
            entry = self._entry(attr) if plus else None
            if not buffer.add(name, index + 1, snapshot_attr(attr), entry):
                break
            if plus:
                self.tree.remember(self.tree.node(ino))
        return buffer.payload()

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
