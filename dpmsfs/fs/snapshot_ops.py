"""pyfuse3 operations of the read-only snapshot view: translate, delegate to SnapshotTree.

The same handlers serve `.snapshots/` in two places:
* in their own FUSE mount on WORKDIR/.snapshots, run by a separate process
  (snapshot_mount.py), where the mount root (FUSE inode 1) stands for `.snapshots`;
* inside the work directory's own mount, as the fallback while that process is not
  running (operations.py delegates every inode >= VIRTUAL_BASE here).

Extended attributes are not shown here: listxattr is empty, and getxattr is not defined,
so pyfuse3 answers ENOSYS and the kernel stops asking for the whole of the view's own
mount (getxattr then fails with EOPNOTSUPP without a request). Without that,
`ls -l` made two GETXATTR round trips per entry (security.selinux and
system.posix_acl_access) that no FUSE file system can cache; on this machine that was
1.7 s for 10,000 entries (docs/design.md, "The snapshot view's own mount").
`dpmsfs restore` still restores the captured extended attributes.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pyfuse3
import trio

from dpmsfs.browse.vfs import SNAPSHOTS_INO, VIRTUAL_BASE, Attr, SnapshotTree
from dpmsfs.fs.replies import attributes, translate_errors


def snapshot_entry(attr: Attr) -> pyfuse3.EntryAttributes:
    """A snapshot entry: only its mtime was captured, so it stands for all three times."""
    return attributes(
        attr.ino, attr.mode, attr.nlink, attr.uid, attr.gid, attr.rdev, attr.size,
        4096, (attr.size + 511) // 512, attr.mtime_ns, attr.mtime_ns, attr.mtime_ns,
    )  # fmt: skip


class SnapshotOperations(pyfuse3.Operations):
    """Serve a SnapshotTree; `own_mount` when FUSE inode 1 is `.snapshots` itself."""

    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(self, tree: SnapshotTree, *, own_mount: bool) -> None:
        super().__init__()
        self.tree = tree
        self._own_mount = own_mount
        self._dirs: dict[int, list[tuple[bytes, int]]] = {}
        self._next_dir = VIRTUAL_BASE
        self.init_done = False

    def init(self) -> None:
        # Called while the kernel's INIT request is answered; the kernel applies the
        # reply (and resets the mount's read-ahead) right after.
        self.init_done = True

    def _ino(self, inode: int) -> int:
        if self._own_mount and inode == pyfuse3.ROOT_INODE:
            return SNAPSHOTS_INO
        return inode

    # --- names and attributes --------------------------------------------------------
    @translate_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        node = self.tree.lookup(self._ino(parent_inode), name)
        self.tree.remember(node)
        return snapshot_entry(self.tree.attr(node))

    def lookup_root(self) -> pyfuse3.EntryAttributes:
        """`.snapshots` itself, as a child of the work directory (fallback only)."""
        node = self.tree.root()
        self.tree.remember(node)
        return snapshot_entry(self.tree.attr(node))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.tree.forget(self._ino(inode), count)

    @translate_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return snapshot_entry(self.tree.getattr(self._ino(inode)))

    @translate_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> bytes:
        return self.tree.readlink(self._ino(inode))

    @translate_errors
    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # --- files -----------------------------------------------------------------------
    @translate_errors
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.FileInfo:
        # Chunk locations come from LMDB: off the FUSE loop's thread.
        fh = await trio.to_thread.run_sync(self.tree.open, self._ino(inode), flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @translate_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(self.tree.read, fh, off, size)

    @translate_errors
    async def release(self, fh: int) -> None:
        self.tree.release(fh)

    # --- directories -----------------------------------------------------------------
    @translate_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> int:
        ino = self._ino(inode)
        listing = await trio.to_thread.run_sync(lambda: list(self.tree.listdir(ino)))
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = [(name, node.ino) for name, node in listing]
        return fh

    @translate_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs[fh]
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            try:
                attr = self.tree.getattr(ino)
            except OSError:
                continue  # forgotten meanwhile
            if not pyfuse3.readdir_reply(token, name, snapshot_entry(attr), index + 1):
                break
            self.tree.remember(self.tree.node(ino))

    @translate_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # --- extended attributes: none shown (see the module docstring) ------------------
    async def listxattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> Sequence[bytes]:
        # An empty list, not ENOSYS: `cp -a`, `rsync -X` and `tar --xattrs` then copy
        # nothing instead of reporting an error. No getxattr handler: ENOSYS.
        return []

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)  # nothing to do at close(): stop asking
