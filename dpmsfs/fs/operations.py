"""pyfuse3 operations: a passthrough of the work directory that reports every change.

Each handler translates the request, performs it on the real directory relative to
descriptors held by the `InodeTable`, reports the change through the `ChangeSink`, and
maps `OSError` to `FUSEError`. Nothing else happens here: no store access, no hashing.

Performance notes (measured in scripts/bench_mount.py, see docs/benchmarks.md):
* The kernel caches entries and attributes for a long time and keeps the page cache
  across opens: only this daemon changes the real directory while it is mounted, and
  the kernel sees every change it makes through this mount.
* The writeback cache is OFF, on purpose: with it, data the equipment has written sits
  in the kernel until it is written back to this daemon, and is lost if the daemon dies
  (fail-open must never lose a write that returned); the kernel also keeps its own file
  times, so captured mtimes drifted from what `stat` showed. Write-through costs one
  request per write() call, plus a GETXATTR security.capability the kernel sends before
  each write (pyfuse3 cannot ask for FUSE_HANDLE_KILLPRIV_V2, which would stop it; see
  docs/design.md); the writeback cache had its own extra request (a SETATTR per unlink).
* O_APPEND is resolved by the kernel (it sends the offset), O_DIRECT is dropped
  underneath (requests arrive in unaligned buffers), a write-only open is read-write
  underneath (harmless, and needed if the writeback cache is ever turned on).
* FLUSH is declined once (ENOSYS) so the kernel stops sending one per close().
* Handlers run inline on the trio thread; a local-disk syscall is cheaper than a thread
  hop. Only fsync leaves the loop, because it waits for the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence

import pyfuse3
import trio

from dpmsfs.browse.vfs import VIRTUAL_BASE, ReadOnly, SnapshotTree
from dpmsfs.fs import syscalls
from dpmsfs.fs.changes import ChangeKind, ChangeSink, NullSink
from dpmsfs.fs.inodes import InodeTable, Node
from dpmsfs.fs.replies import CACHE_TIMEOUT, attributes, translate_errors
from dpmsfs.fs.snapshot_ops import SnapshotOperations

log = logging.getLogger(__name__)

RESERVED_ROOT_NAME = b".snapshots"
_PROC_FD = b"/proc/self/fd/%d"


class _OpenFile:
    __slots__ = ("node", "wrote")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.wrote = False


class _OpenDir:
    __slots__ = ("entries", "fd", "node")

    def __init__(self, node: Node, fd: int) -> None:
        self.node = node
        self.fd = fd
        self.entries: list[bytes] | None = None


class PassthroughOperations(pyfuse3.Operations):
    """Serve the directory open as `root_fd` through FUSE."""

    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(
        self,
        root_fd: int,
        sink: ChangeSink | None = None,
        *,
        fd_budget: int = 4096,
        snapshots: SnapshotTree | None = None,
    ) -> None:
        super().__init__()
        self.inodes = InodeTable(root_fd, fd_budget)
        self.sink: ChangeSink = sink or NullSink()
        # .snapshots/ (inodes and handles >= VIRTUAL_BASE), while its own mount is not up
        self._view = (
            SnapshotOperations(snapshots, own_mount=False) if snapshots is not None else None
        )
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, _OpenDir] = {}

    @property
    def open_file_count(self) -> int:
        """File handles not yet released (the kernel releases after close() returns)."""
        return len(self._files)

    # --- helpers ---------------------------------------------------------------------
    def _entry(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        return attributes(
            self.inodes.fuse_ino(st.st_ino), st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip

    def _real(self, inode: int) -> Node:
        """The node of a real inode; a snapshot inode can never be changed."""
        if inode >= VIRTUAL_BASE:
            raise ReadOnly()
        return self.inodes.get(inode)

    def _snapshot_view(self) -> SnapshotOperations:
        if self._view is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # no snapshots are served
        return self._view

    def _attr_entry(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        """Attributes for a getattr or setattr reply: the real inode number, even the
        root's (the kernel takes st_ino from the attributes, not from the node id)."""
        entry = self._entry(st)
        entry.st_ino = st.st_ino
        return entry

    def _stat(self, node: Node) -> os.stat_result:
        if node.is_dir:
            return os.stat(self.inodes.dir_fd(node))
        if node.fd is not None:
            return os.stat(node.fd)
        dir_fd, name = self.inodes.locate(node)
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def _proc_path(self, node: Node) -> bytes:
        """A /proc path reaching `node` itself (not for symlinks)."""
        if node.is_dir:
            return _PROC_FD % self.inodes.dir_fd(node)
        if node.fd is not None:
            return _PROC_FD % node.fd
        dir_fd, name = self.inodes.locate(node)
        # Regular files hold no fd; reach them through the parent directory's one.
        return (_PROC_FD % dir_fd) + b"/" + name

    def _record(self, kind: ChangeKind, node: Node) -> None:
        path = self.inodes.path(node)
        if path is not None:
            self.sink.record(kind, path)

    def _record_child(self, kind: ChangeKind, parent: Node, name: bytes) -> None:
        path = self.inodes.child_path(parent, name)
        if path is not None:
            self.sink.record(kind, path)

    @staticmethod
    def _check_reserved(parent: Node, name: bytes) -> None:
        if parent.ino == pyfuse3.ROOT_INODE and name == RESERVED_ROOT_NAME:
            raise ReadOnly()

    def _give_to_caller(
        self,
        parent_fd: int,
        ctx: pyfuse3.RequestContext,
        *,
        fd: int | None = None,
        name: bytes = b"",
        mode: int = 0,
        is_dir: bool = False,
    ) -> None:
        """Make a new object owned by the calling user, as native creation would.

        The daemon runs as root; the object must belong to the caller, with the group
        of a set-group-ID parent directory where the file system would apply it.
        """
        if ctx.uid == 0 and ctx.gid == 0:
            return
        gid = -1 if os.fstat(parent_fd).st_mode & stat.S_ISGID else ctx.gid
        if fd is not None:
            os.fchown(fd, ctx.uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID) and not is_dir:
                os.fchmod(fd, mode & 0o7777)  # chown cleared the set-id bits
        else:
            syscalls.fchownat(parent_fd, name, ctx.uid, gid, syscalls.AT_SYMLINK_NOFOLLOW)
            if mode & (stat.S_ISUID | stat.S_ISGID) and not is_dir:
                os.chmod(name, mode & 0o7777, dir_fd=parent_fd)

    def _make(
        self,
        parent_inode: int,
        name: bytes,
        ctx: pyfuse3.RequestContext,
        kind: ChangeKind,
        mode: int,
        create: Callable[[int], None],
    ) -> pyfuse3.EntryAttributes:
        """mknod, mkdir, symlink: create in the parent, give it to the caller, report it."""
        parent = self._real(parent_inode)
        self._check_reserved(parent, name)
        parent_fd = self.inodes.dir_fd(parent)
        create(parent_fd)
        self._give_to_caller(parent_fd, ctx, name=name, mode=mode, is_dir=kind == ChangeKind.MKDIR)
        entry = self._new_entry(parent, name, parent_fd)
        self._record_child(kind, parent, name)
        return entry

    def _new_entry(self, parent: Node, name: bytes, parent_fd: int) -> pyfuse3.EntryAttributes:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        self.inodes.remember(parent, name, st)
        return self._entry(st)

    # --- lookup and attributes -------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode >= VIRTUAL_BASE:
            return await self._snapshot_view().lookup(parent_inode, name, ctx)
        if parent_inode == pyfuse3.ROOT_INODE and name == RESERVED_ROOT_NAME:
            return self._snapshot_view().lookup_root()
        try:
            parent = self.inodes.get(parent_inode)
            st = os.stat(name, dir_fd=self.inodes.dir_fd(parent), follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                # Negative entry, cached by the kernel: only we create names here.
                entry = pyfuse3.EntryAttributes()
                entry.st_ino = 0
                entry.entry_timeout = CACHE_TIMEOUT
                return entry
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self.inodes.remember(parent, name, st)
        return self._entry(st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            if inode >= VIRTUAL_BASE:
                if self._view is not None:
                    await self._view.forget([(inode, count)])
                continue
            try:
                self.inodes.forget(inode, count)
            except OSError:
                log.exception("closing descriptor of inode %d", inode)

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode >= VIRTUAL_BASE:
            return await self._snapshot_view().getattr(inode, ctx)
        try:
            return self._attr_entry(self._stat(self.inodes.get(inode)))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    @translate_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode >= VIRTUAL_BASE:
            raise ReadOnly()
        node = self.inodes.get(inode)
        if fields.update_size:
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                fd = os.open(self._proc_path(node), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
            self._record(ChangeKind.TRUNCATE, node)
        changed_meta = False
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            self._at_call(node, lambda d, n, f: syscalls.fchownat(d, n, uid, gid, f))
            changed_meta = True
        if fields.update_mode:
            if not node.is_dir and node.fd is None and self._is_symlink(node):
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
            if fh is not None:
                os.fchmod(fh, stat.S_IMODE(attr.st_mode))
            else:
                os.chmod(self._proc_path(node), stat.S_IMODE(attr.st_mode))
            changed_meta = True
        if fields.update_atime or fields.update_mtime:
            atime = attr.st_atime_ns if fields.update_atime else None
            mtime = attr.st_mtime_ns if fields.update_mtime else None
            self._at_call(node, lambda d, n, f: syscalls.utimensat(d, n, atime, mtime, f))
            changed_meta = True
        if changed_meta:
            self._record(ChangeKind.SETATTR, node)
        if fh is not None:
            return self._attr_entry(os.fstat(fh))
        return self._attr_entry(self._stat(node))

    def _is_symlink(self, node: Node) -> bool:
        return stat.S_ISLNK(self._stat(node).st_mode)

    def _at_call(self, node: Node, call: Callable[[int, bytes, int], None]) -> None:
        """Run an *at system call on `node` itself, never following a symlink."""
        if node.is_dir:
            call(self.inodes.dir_fd(node), b"", syscalls.AT_EMPTY_PATH)
        elif node.fd is not None:
            call(node.fd, b"", syscalls.AT_EMPTY_PATH)
        else:
            dir_fd, name = self.inodes.locate(node)
            call(dir_fd, name, syscalls.AT_SYMLINK_NOFOLLOW)

    @translate_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if inode >= VIRTUAL_BASE:
            return await self._snapshot_view().readlink(inode, ctx)
        node = self.inodes.get(inode)
        if node.fd is not None:
            return os.readlink(b"", dir_fd=node.fd)
        dir_fd, name = self.inodes.locate(node)
        return os.readlink(name, dir_fd=dir_fd)

    @translate_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.inodes.dir_fd(self.inodes.root))
        data = pyfuse3.StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = st.f_bfree
        data.f_bavail = st.f_bavail
        data.f_files = st.f_files
        data.f_ffree = st.f_ffree
        data.f_favail = st.f_favail
        data.f_namemax = st.f_namemax
        return data

    # --- creating and removing names -------------------------------------------------
    @translate_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._make(
            parent_inode, name, ctx, ChangeKind.MKNOD, mode,
            lambda fd: os.mknod(name, mode, rdev, dir_fd=fd),
        )  # fmt: skip

    @translate_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._make(
            parent_inode, name, ctx, ChangeKind.MKDIR, mode,
            lambda fd: os.mkdir(name, mode, dir_fd=fd),
        )  # fmt: skip

    @translate_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._make(
            parent_inode, name, ctx, ChangeKind.SYMLINK, 0,
            lambda fd: os.symlink(target, name, dir_fd=fd),
        )  # fmt: skip

    @translate_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, is_dir=False)

    @translate_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, is_dir=True)

    async def _remove(self, parent_inode: int, name: bytes, *, is_dir: bool) -> None:
        parent = self._real(parent_inode)
        self._check_reserved(parent, name)
        parent_fd = self.inodes.dir_fd(parent)
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        node = self.inodes.prepare_unlink(parent, name, st)
        path = self.inodes.child_path(parent, name)
        if is_dir:
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        self.inodes.unlinked(node)
        if path is not None:
            self.sink.record(ChangeKind.RMDIR if is_dir else ChangeKind.UNLINK, path)

    @translate_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._real(parent_inode_old)
        new_parent = self._real(parent_inode_new)
        self._check_reserved(old_parent, name_old)
        self._check_reserved(new_parent, name_new)
        old_fd = self.inodes.dir_fd(old_parent)
        new_fd = self.inodes.dir_fd(new_parent)
        src_st = os.stat(name_old, dir_fd=old_fd, follow_symlinks=False)
        src = self.inodes.find(self.inodes.fuse_ino(src_st.st_ino))
        if src is not None and (src.parent is not old_parent or src.name != name_old):
            src = None  # known under another name (a hard link): that name stays true
        try:
            dst_st: os.stat_result | None = os.stat(name_new, dir_fd=new_fd, follow_symlinks=False)
        except FileNotFoundError:
            dst_st = None
        old_path = self.inodes.child_path(old_parent, name_old)
        new_path = self.inodes.child_path(new_parent, name_new)

        if flags & syscalls.RENAME_EXCHANGE:
            syscalls.renameat2(old_fd, name_old, new_fd, name_new, flags)
            dst = None
            if dst_st is not None:
                dst = self.inodes.find(self.inodes.fuse_ino(dst_st.st_ino))
                if dst is not None and (dst.parent is not new_parent or dst.name != name_new):
                    dst = None
            if src is not None:
                self.inodes.moved(src, new_parent, name_new)
            if dst is not None:
                self.inodes.moved(dst, old_parent, name_old)
            if old_path is not None and new_path is not None:
                self.sink.record(ChangeKind.EXCHANGE, new_path, old_path)
            return

        replaced = None
        if dst_st is not None and dst_st.st_ino != src_st.st_ino:
            replaced = self.inodes.prepare_unlink(new_parent, name_new, dst_st)
        if flags:
            syscalls.renameat2(old_fd, name_old, new_fd, name_new, flags)
        else:
            os.rename(name_old, name_new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        self.inodes.unlinked(replaced)
        if src is not None:
            self.inodes.moved(src, new_parent, name_new)
        if new_path is not None:
            self.sink.record(ChangeKind.RENAME, new_path, old_path)

    @translate_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._real(inode)
        new_parent = self._real(new_parent_inode)
        self._check_reserved(new_parent, new_name)
        new_fd = self.inodes.dir_fd(new_parent)
        old_path = self.inodes.path(node)
        if node.fd is not None:
            os.link(_PROC_FD % node.fd, new_name, dst_dir_fd=new_fd, follow_symlinks=True)
        else:
            dir_fd, name = self.inodes.locate(node)
            os.link(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=new_fd, follow_symlinks=False)
        st = os.stat(new_name, dir_fd=new_fd, follow_symlinks=False)
        if not node.pinned:
            # Now hard-linked: the name we know it by may vanish without our noticing.
            self.inodes.pin(node, new_fd, new_name)
        self.inodes.remember(new_parent, new_name, st)
        new_path = self.inodes.child_path(new_parent, new_name)
        if new_path is not None:
            self.sink.record(ChangeKind.LINK, new_path, old_path)
        return self._entry(st)

    # --- files -----------------------------------------------------------------------
    @staticmethod
    def _underlying_flags(flags: int) -> int:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT)
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return (flags & ~os.O_APPEND) | os.O_CLOEXEC

    @translate_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode >= VIRTUAL_BASE:
            return await self._snapshot_view().open(inode, flags, ctx)
        node = self.inodes.get(inode)
        real_flags = self._underlying_flags(flags)
        if node.fd is not None:
            fd = os.open(_PROC_FD % node.fd, real_flags)
        else:
            dir_fd, name = self.inodes.locate(node)
            fd = os.open(name, real_flags | os.O_NOFOLLOW, dir_fd=dir_fd)
        handle = _OpenFile(node)
        self._files[fd] = handle
        node.open_count += 1
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            handle.wrote = True
            self._record(ChangeKind.TRUNCATE, node)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @translate_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._real(parent_inode)
        self._check_reserved(parent, name)
        parent_fd = self.inodes.dir_fd(parent)
        real_flags = self._underlying_flags(flags) | os.O_CREAT | os.O_NOFOLLOW
        if flags & os.O_EXCL:
            real_flags |= os.O_EXCL
        fd = os.open(name, real_flags, mode, dir_fd=parent_fd)
        try:
            self._give_to_caller(parent_fd, ctx, fd=fd, mode=mode)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        node = self.inodes.remember(parent, name, st)
        node.open_count += 1
        handle = _OpenFile(node)
        handle.wrote = True
        self._files[fd] = handle
        self._record_child(ChangeKind.CREATE, parent, name)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._entry(st)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh >= VIRTUAL_BASE:
            return await self._snapshot_view().read(fh, off, size)
        try:
            return os.pread(fh, size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            written = os.pwrite(fh, buf, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        handle = self._files[fh]
        if not handle.wrote:
            handle.wrote = True
            self._record(ChangeKind.WRITE, handle.node)
        return written

    async def flush(self, fh: int) -> None:
        # Nothing to do at close() for a local file; ENOSYS makes the kernel stop asking.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @translate_errors
    async def release(self, fh: int) -> None:
        if fh >= VIRTUAL_BASE:
            await self._snapshot_view().release(fh)
            return
        handle = self._files.pop(fh)
        try:
            os.close(fh)
        finally:
            if handle.wrote:
                self._record(ChangeKind.CLOSE_WRITE, handle.node)
            self.inodes.release_open(handle.node)

    @translate_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh >= VIRTUAL_BASE:
            return
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    # --- directories -----------------------------------------------------------------
    @translate_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode >= VIRTUAL_BASE:
            return await self._snapshot_view().opendir(inode, ctx)
        node = self.inodes.get(inode)
        fd = os.open(
            b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.inodes.dir_fd(node)
        )
        self._dirs[fd] = _OpenDir(node, fd)
        return fd

    @translate_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh >= VIRTUAL_BASE:
            await self._snapshot_view().readdir(fh, start_id, token)
            return
        handle = self._dirs[fh]
        node = handle.node
        if handle.entries is None or start_id == 0:
            names = [os.fsencode(n) for n in os.listdir(fh)]
            if node.ino == pyfuse3.ROOT_INODE:
                names = [n for n in names if n != RESERVED_ROOT_NAME]
            handle.entries = [b".", b"..", *names]
        entries = handle.entries
        dir_fd = self.inodes.dir_fd(node)
        for index in range(start_id, len(entries)):
            name = entries[index]
            try:
                if index == 0:
                    st = self._stat(node)
                elif index == 1 and node is self.inodes.root:
                    # The work directory's real parent, as a native listing shows. Only
                    # from the root: ".." landing on the work directory would follow the
                    # mount on top of it, and wait for this very loop.
                    st = os.stat(b"..", dir_fd=dir_fd)
                elif index == 1:
                    st = self._stat(node.parent or node)
                else:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing was taken
            # The kernel links no node for "." and "..": only their d_ino is used.
            entry = self._attr_entry(st) if index < 2 else self._entry(st)
            if not pyfuse3.readdir_reply(token, name, entry, index + 1):
                break
            if index >= 2:
                # The kernel now holds a reference; "." and ".." never take one.
                self.inodes.remember(node, name, st)

    @translate_errors
    async def releasedir(self, fh: int) -> None:
        if fh >= VIRTUAL_BASE:
            await self._snapshot_view().releasedir(fh)
            return
        self._dirs.pop(fh, None)
        os.close(fh)

    @translate_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if fh >= VIRTUAL_BASE:
            return
        await trio.to_thread.run_sync(os.fsync, fh)

    # --- extended attributes ---------------------------------------------------------
    def _xattr_path(self, node: Node) -> bytes:
        if not node.is_dir and node.fd is None and self._is_symlink(node):
            raise OSError(errno.EPERM, "no extended attributes on symlinks")
        return self._proc_path(node)

    @translate_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._real(inode)
        os.setxattr(self._xattr_path(node), name, value)
        self._record(ChangeKind.XATTR, node)

    @translate_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode >= VIRTUAL_BASE:
            # As in the view's own mount: no extended attributes shown (snapshot_ops.py).
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = self.inodes.get(inode)
        try:
            return os.getxattr(self._xattr_path(node), name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @translate_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if inode >= VIRTUAL_BASE:
            return await self._snapshot_view().listxattr(inode, ctx)
        node = self.inodes.get(inode)
        if not node.is_dir and node.fd is None and self._is_symlink(node):
            return []
        return [os.fsencode(n) for n in os.listxattr(self._proc_path(node))]

    @translate_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._real(inode)
        try:
            os.removexattr(self._xattr_path(node), name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise
        self._record(ChangeKind.XATTR, node)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Never called: the mount uses default_permissions, so the kernel checks.
        return True

    def close(self) -> None:
        for fd in list(self._files):
            os.close(fd)
        for fd in list(self._dirs):
            os.close(fd)
        self._files.clear()
        self._dirs.clear()
        self.inodes.close_all()
