"""The live work-directory passthrough on our own FUSE layer (dpmsfs.fuseproto).

The same semantics as operations.py (the pyfuse3 path, kept selectable during the
transition): each handler translates the request, performs it on the real directory
relative to descriptors held by the `InodeTable`, reports the change through the
`ChangeSink` and returns the reply payload; OSError becomes the error reply.

What differs, and why:
* Regular files are opened with FOPEN_PASSTHROUGH when the kernel granted
  FUSE_PASSTHROUGH: the kernel reads and writes the real file itself, and this daemon
  sees only opens, releases and metadata. Capture stays exact because a handle opened
  for writing counts as changed at release (and is reported again every few minutes
  while held open, see `open_writer_marks`). One backing id per inode, shared by its opens
  (the kernel refuses a second, different backing file for an inode).
* HANDLE_KILLPRIV_V2: the kernel no longer asks for security.capability before each
  write; it tells us instead when the set-id bits must go (WRITE, SETATTR, OPEN flags).
* FALLOCATE, LSEEK (SEEK_DATA/SEEK_HOLE) and COPY_FILE_RANGE, which pyfuse3 lacks.
* Handlers run on the session's worker threads. One lock serializes everything that
  touches the inode table; READ, WRITE and FSYNC touch only their descriptor and run
  without it (fsync waits for the disk: it must not hold up other requests).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable

from dpmsfs.browse.vfs import VIRTUAL_BASE, ReadOnly, SnapshotTree
from dpmsfs.fs import syscalls
from dpmsfs.fs.changes import ChangeKind, ChangeSink, NullSink
from dpmsfs.fs.inodes import ROOT_INODE, InodeTable, Node
from dpmsfs.fs.kernel_snapshots import KernelSnapshotView
from dpmsfs.fs.replies import CACHE_TIMEOUT
from dpmsfs.fuseproto import abi, replies
from dpmsfs.fuseproto.session import Negotiated, Operations, Request, SetattrValues

log = logging.getLogger(__name__)

RESERVED_ROOT_NAME = b".snapshots"
_PROC_FD = b"/proc/self/fd/%d"
_SETID = stat.S_ISUID | stat.S_ISGID


class _OpenFile:
    __slots__ = ("backing", "fd", "node", "writable", "wrote")

    def __init__(self, node: Node, fd: int, writable: bool) -> None:
        self.node = node
        self.fd = fd
        self.writable = writable
        self.wrote = False
        self.backing = False


class _OpenDir:
    __slots__ = ("entries", "fd", "node")

    def __init__(self, node: Node, fd: int) -> None:
        self.node = node
        self.fd = fd
        self.entries: list[bytes] | None = None


def _kill_setid(fd: int) -> None:
    """Drop set-user-ID, and set-group-ID where it means "set-id" (group-executable),
    as the kernel would for an unprivileged writer (HANDLE_KILLPRIV_V2 leaves it to us)."""
    mode = os.fstat(fd).st_mode
    kill = mode & stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        kill |= stat.S_ISGID
    if kill:
        os.fchmod(fd, stat.S_IMODE(mode) & ~kill)


class KernelPassthroughOperations(Operations):
    """Serve the directory open as `root_fd` through our FUSE session."""

    def __init__(
        self,
        root_fd: int,
        sink: ChangeSink | None = None,
        *,
        fd_budget: int = 4096,
        snapshots: SnapshotTree | None = None,
    ) -> None:
        self.inodes = InodeTable(root_fd, fd_budget)
        self.sink: ChangeSink = sink or NullSink()
        self._view = KernelSnapshotView(snapshots) if snapshots is not None else None
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, _OpenDir] = {}
        self._backing: dict[int, list[int]] = {}  # inode -> [backing id, opens]
        self._cached_opens: dict[int, int] = {}  # inode -> opens served without it
        self._lock = threading.RLock()
        self.negotiated: Negotiated | None = None
        self.passthrough = False
        self.killpriv = False
        self._backing_open: Callable[[int], int] | None = None
        self._backing_close: Callable[[int], None] | None = None
        self._flush_declined = False

    def attach(
        self, backing_open: Callable[[int], int], backing_close: Callable[[int], None]
    ) -> None:
        """The session's passthrough ioctls (FUSE_DEV_IOC_BACKING_OPEN/CLOSE)."""
        self._backing_open = backing_open
        self._backing_close = backing_close

    def init(self, negotiated: Negotiated) -> None:
        self.negotiated = negotiated
        self.passthrough = negotiated.passthrough and self._backing_open is not None
        self.killpriv = negotiated.killpriv_v2

    @property
    def open_file_count(self) -> int:
        """File handles not yet released (the kernel releases after close() returns)."""
        return len(self._files)

    def open_writer_marks(self) -> dict[bytes, tuple[int, int]]:
        """(size, mtime) of each file held open for writing now, by path: with
        passthrough their writes are invisible here, so the daemon re-reports those
        that changed (kernel_mount.py). fstat under the lock: a descriptor is never
        looked at after its release closed it."""
        with self._lock:
            marks = {}
            for fd, handle in self._files.items():
                if handle.writable:
                    path = self.inodes.path(handle.node)
                    if path is not None:
                        st = os.fstat(fd)
                        marks[path] = (st.st_size, st.st_mtime_ns)
            return marks

    # --- helpers ---------------------------------------------------------------------
    def _attr(self, st: os.stat_result) -> replies.Attr:
        return replies.Attr.from_stat(st, self.inodes.fuse_ino(st.st_ino))

    def _entry(self, st: os.stat_result) -> bytes:
        attr = self._attr(st)
        return replies.entry(attr.ino, attr, CACHE_TIMEOUT, CACHE_TIMEOUT)

    def _attr_reply(self, st: os.stat_result) -> bytes:
        """GETATTR/SETATTR: the real inode number, even the root's (the kernel takes
        st_ino from the attributes, not from the node id)."""
        return replies.attr_out(replies.Attr.from_stat(st), CACHE_TIMEOUT)

    def _real(self, inode: int) -> Node:
        if inode >= VIRTUAL_BASE:
            raise ReadOnly()
        return self.inodes.get(inode)

    def _snapshot_view(self) -> KernelSnapshotView:
        if self._view is None:
            raise OSError(errno.ENOENT, "no snapshots are served")
        return self._view

    def _stat(self, node: Node) -> os.stat_result:
        if node.is_dir:
            return os.stat(self.inodes.dir_fd(node))
        if node.fd is not None:
            return os.stat(node.fd)
        dir_fd, name = self.inodes.locate(node)
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def _proc_path(self, node: Node) -> bytes:
        if node.is_dir:
            return _PROC_FD % self.inodes.dir_fd(node)
        if node.fd is not None:
            return _PROC_FD % node.fd
        dir_fd, name = self.inodes.locate(node)
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
        if parent.ino == ROOT_INODE and name == RESERVED_ROOT_NAME:
            raise ReadOnly()

    def _give_to_caller(
        self,
        parent_fd: int,
        req: Request,
        *,
        fd: int | None = None,
        name: bytes = b"",
        mode: int = 0,
        is_dir: bool = False,
    ) -> None:
        """Make a new object owned by the calling user, as native creation would (with
        the group of a set-group-ID parent directory)."""
        if req.uid == 0 and req.gid == 0:
            return
        gid = -1 if os.fstat(parent_fd).st_mode & stat.S_ISGID else req.gid
        if fd is not None:
            os.fchown(fd, req.uid, gid)
            if mode & _SETID and not is_dir:
                os.fchmod(fd, mode & 0o7777)  # chown cleared the set-id bits
        else:
            syscalls.fchownat(parent_fd, name, req.uid, gid, syscalls.AT_SYMLINK_NOFOLLOW)
            if mode & _SETID and not is_dir:
                os.chmod(name, mode & 0o7777, dir_fd=parent_fd)

    def _make(
        self,
        req: Request,
        name: bytes,
        kind: ChangeKind,
        mode: int,
        create: Callable[[int], None],
    ) -> bytes:
        with self._lock:
            parent = self._real(req.nodeid)
            self._check_reserved(parent, name)
            parent_fd = self.inodes.dir_fd(parent)
            create(parent_fd)
            self._give_to_caller(
                parent_fd, req, name=name, mode=mode, is_dir=kind == ChangeKind.MKDIR
            )
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            self.inodes.remember(parent, name, st)
            self._record_child(kind, parent, name)
            return self._entry(st)

    # --- lookup and attributes -------------------------------------------------------
    def lookup(self, req: Request, parent_inode: int, name: bytes) -> bytes:
        with self._lock:
            if parent_inode >= VIRTUAL_BASE:
                return self._snapshot_view().lookup(parent_inode, name)
            if parent_inode == ROOT_INODE and name == RESERVED_ROOT_NAME:
                return self._snapshot_view().lookup_root()
            parent = self.inodes.get(parent_inode)
            try:
                st = os.stat(name, dir_fd=self.inodes.dir_fd(parent), follow_symlinks=False)
            except FileNotFoundError:
                # Negative entry, cached by the kernel: only we create names here.
                return replies.negative_entry(CACHE_TIMEOUT)
            self.inodes.remember(parent, name, st)
            return self._entry(st)

    def forget(self, items: list[tuple[int, int]]) -> None:
        with self._lock:
            for inode, count in items:
                if inode >= VIRTUAL_BASE:
                    if self._view is not None:
                        self._view.forget(inode, count)
                    continue
                try:
                    self.inodes.forget(inode, count)
                except OSError:
                    log.exception("closing descriptor of inode %d", inode)

    def getattr(self, req: Request, fh: int | None) -> bytes:
        inode = req.nodeid
        if inode >= VIRTUAL_BASE:
            with self._lock:
                return self._snapshot_view().getattr(inode)
        if fh is not None and fh in self._files:
            return self._attr_reply(os.fstat(fh))
        with self._lock:
            return self._attr_reply(self._stat(self.inodes.get(inode)))

    def setattr(self, req: Request, valid: int, fh: int | None, values: SetattrValues) -> bytes:
        if req.nodeid >= VIRTUAL_BASE:
            raise ReadOnly()
        if fh is not None and fh not in self._files:
            fh = None
        with self._lock:
            node = self.inodes.get(req.nodeid)
            if valid & abi.FATTR_SIZE:
                if fh is not None:
                    os.ftruncate(fh, values.size)
                    if valid & abi.FATTR_KILL_SUIDGID and not valid & abi.FATTR_MODE:
                        _kill_setid(fh)
                else:
                    fd = os.open(self._proc_path(node), os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.ftruncate(fd, values.size)
                        if valid & abi.FATTR_KILL_SUIDGID and not valid & abi.FATTR_MODE:
                            _kill_setid(fd)
                    finally:
                        os.close(fd)
                self._record(ChangeKind.TRUNCATE, node)
            changed_meta = False
            if valid & (abi.FATTR_UID | abi.FATTR_GID):
                uid = values.uid if valid & abi.FATTR_UID else -1
                gid = values.gid if valid & abi.FATTR_GID else -1
                self._at_call(node, lambda d, n, f: syscalls.fchownat(d, n, uid, gid, f))
                changed_meta = True
            if valid & abi.FATTR_MODE:
                if not node.is_dir and node.fd is None and self._is_symlink(node):
                    raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
                if fh is not None:
                    os.fchmod(fh, stat.S_IMODE(values.mode))
                else:
                    os.chmod(self._proc_path(node), stat.S_IMODE(values.mode))
                changed_meta = True
            if valid & (abi.FATTR_ATIME | abi.FATTR_MTIME):
                atime_now = bool(valid & abi.FATTR_ATIME_NOW)
                mtime_now = bool(valid & abi.FATTR_MTIME_NOW)
                atime = values.atime_ns if valid & abi.FATTR_ATIME and not atime_now else None
                mtime = values.mtime_ns if valid & abi.FATTR_MTIME and not mtime_now else None
                self._at_call(
                    node,
                    lambda d, n, f: syscalls.utimensat(
                        d, n, atime, mtime, f, atime_now=atime_now, mtime_now=mtime_now
                    ),
                )
                changed_meta = True
            if changed_meta:
                self._record(ChangeKind.SETATTR, node)
            if fh is not None:
                return self._attr_reply(os.fstat(fh))
            return self._attr_reply(self._stat(node))

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

    def readlink(self, req: Request) -> bytes:
        with self._lock:
            if req.nodeid >= VIRTUAL_BASE:
                return self._snapshot_view().readlink(req.nodeid)
            node = self.inodes.get(req.nodeid)
            if node.fd is not None:
                return os.readlink(b"", dir_fd=node.fd)
            dir_fd, name = self.inodes.locate(node)
            return os.readlink(name, dir_fd=dir_fd)

    def statfs(self, req: Request) -> bytes:
        with self._lock:
            return replies.statfs_out(os.statvfs(self.inodes.dir_fd(self.inodes.root)))

    # --- creating and removing names -------------------------------------------------
    def mknod(self, req: Request, name: bytes, mode: int, rdev: int) -> bytes:
        return self._make(
            req, name, ChangeKind.MKNOD, mode, lambda fd: os.mknod(name, mode, rdev, dir_fd=fd)
        )

    def mkdir(self, req: Request, name: bytes, mode: int) -> bytes:
        return self._make(
            req, name, ChangeKind.MKDIR, mode, lambda fd: os.mkdir(name, mode, dir_fd=fd)
        )

    def symlink(self, req: Request, name: bytes, target: bytes) -> bytes:
        return self._make(
            req, name, ChangeKind.SYMLINK, 0, lambda fd: os.symlink(target, name, dir_fd=fd)
        )

    def unlink(self, req: Request, name: bytes) -> bytes:
        return self._remove(req.nodeid, name, is_dir=False)

    def rmdir(self, req: Request, name: bytes) -> bytes:
        return self._remove(req.nodeid, name, is_dir=True)

    def _remove(self, parent_inode: int, name: bytes, *, is_dir: bool) -> bytes:
        with self._lock:
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
            return b""

    def rename(
        self, req: Request, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int
    ) -> bytes:
        with self._lock:
            self._rename(req.nodeid, name_old, parent_inode_new, name_new, flags)
            return b""

    def _rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int,
    ) -> None:  # fmt: skip
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

    def link(self, req: Request, old_node: int, new_name: bytes) -> bytes:
        with self._lock:
            node = self._real(old_node)
            new_parent = self._real(req.nodeid)
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

    def _opened(self, node: Node, fd: int, flags: int, created: bool = False) -> bytes:
        """Register an open handle; the reply, with passthrough where granted."""
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        handle = _OpenFile(node, fd, writable)
        # NOFLUSH: nothing to do at close() for a local file, so the kernel sends no
        # FLUSH (and close() cannot fail once the daemon is gone).
        open_flags = abi.FOPEN_KEEP_CACHE | abi.FOPEN_NOFLUSH
        backing_id = 0
        shared = self._backing.get(node.ino)
        register = self._backing_open
        if register is not None and self._may_pass_through(node, fd, shared is not None):
            try:
                if shared is None:
                    shared = [register(fd), 0]
                    self._backing[node.ino] = shared
                shared[1] += 1
                handle.backing = True
                backing_id = shared[0]
                open_flags = abi.FOPEN_PASSTHROUGH | abi.FOPEN_NOFLUSH
            except OSError as exc:
                log.warning("passthrough refused for %r: %s", self.inodes.path(node), exc)
        if not handle.backing:
            self._cached_opens[node.ino] = self._cached_opens.get(node.ino, 0) + 1
        if writable and handle.backing:
            # Writes are not seen here: an open for writing is a change (at release).
            handle.wrote = True
            if not created:  # CREATE already says so
                self._record(ChangeKind.WRITE, node)
        self._files[fd] = handle
        node.open_count += 1
        return replies.open_out(fd, open_flags, backing_id)

    def _may_pass_through(self, node: Node, fd: int, has_backing: bool) -> bool:
        """Whether this open may be FOPEN_PASSTHROUGH.

        The kernel refuses to mix passthrough and daemon-served opens of one inode
        (ETXTBSY), so an inode with either kind open keeps that kind. Set-id files
        are never passed through: the kernel's write to the backing file runs with
        our (root) credentials and would keep the set-id bits an unprivileged write
        must clear; served here, each WRITE carries WRITE_KILL_SUIDGID instead."""
        if not self.passthrough or self._backing_open is None:
            return False
        if has_backing:
            return True
        if self._cached_opens.get(node.ino, 0):
            return False
        mode = os.fstat(fd).st_mode
        return not (mode & stat.S_ISUID or (mode & stat.S_ISGID and mode & stat.S_IXGRP))

    def open(self, req: Request, flags: int, open_flags: int) -> bytes:
        with self._lock:
            if req.nodeid >= VIRTUAL_BASE:
                return self._snapshot_view().open(req.nodeid, flags)
            node = self.inodes.get(req.nodeid)
            real_flags = self._underlying_flags(flags)
            if node.fd is not None:
                fd = os.open(_PROC_FD % node.fd, real_flags)
            else:
                dir_fd, name = self.inodes.locate(node)
                fd = os.open(name, real_flags | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                if self.killpriv and open_flags & abi.OPEN_KILL_SUIDGID:
                    _kill_setid(fd)
                reply = self._opened(node, fd, flags)
            except OSError:
                os.close(fd)
                raise
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                self._files[fd].wrote = True
                self._record(ChangeKind.TRUNCATE, node)
            return reply

    def create(self, req: Request, name: bytes, mode: int, flags: int, open_flags: int) -> bytes:
        with self._lock:
            parent = self._real(req.nodeid)
            self._check_reserved(parent, name)
            parent_fd = self.inodes.dir_fd(parent)
            real_flags = self._underlying_flags(flags) | os.O_CREAT | os.O_NOFOLLOW
            if flags & os.O_EXCL:
                real_flags |= os.O_EXCL
            fd = os.open(name, real_flags, mode, dir_fd=parent_fd)
            try:
                self._give_to_caller(parent_fd, req, fd=fd, mode=mode)
                if self.killpriv and open_flags & abi.OPEN_KILL_SUIDGID:
                    _kill_setid(fd)
                st = os.fstat(fd)
                node = self.inodes.remember(parent, name, st)
                reply = self._opened(node, fd, flags, created=True)
            except OSError:
                os.close(fd)
                raise
            self._files[fd].wrote = True
            self._record_child(ChangeKind.CREATE, parent, name)
            return self._entry(st) + reply

    def read(self, req: Request, fh: int, offset: int, size: int) -> bytes:
        if fh >= VIRTUAL_BASE:
            return self._snapshot_view().read(fh, offset, size)
        return os.pread(fh, size, offset)

    def write(
        self, req: Request, fh: int, offset: int, data: memoryview, write_flags: int
    ) -> bytes:
        if self.killpriv and write_flags & abi.WRITE_KILL_SUIDGID:
            _kill_setid(fh)
        written = os.pwrite(fh, data, offset)
        handle = self._files[fh]
        if not handle.wrote:
            with self._lock:
                if not handle.wrote:
                    handle.wrote = True
                    self._record(ChangeKind.WRITE, handle.node)
        return replies.write_out(written)

    def flush(self, req: Request, fh: int) -> bytes:
        # Nothing to do at close() for a local file; ENOSYS makes the kernel stop asking.
        raise OSError(errno.ENOSYS, "flush")

    def release(self, req: Request, fh: int, flags: int) -> bytes:
        with self._lock:
            if fh >= VIRTUAL_BASE:
                self._snapshot_view().release(fh)
                return b""
            handle = self._files.pop(fh)
            try:
                os.close(fh)
            finally:
                if handle.backing:
                    self._drop_backing(handle.node)
                else:
                    left = self._cached_opens.get(handle.node.ino, 0) - 1
                    if left > 0:
                        self._cached_opens[handle.node.ino] = left
                    else:
                        self._cached_opens.pop(handle.node.ino, None)
                if handle.wrote:
                    self._record(ChangeKind.CLOSE_WRITE, handle.node)
                self.inodes.release_open(handle.node)
            return b""

    def _drop_backing(self, node: Node) -> None:
        shared = self._backing.get(node.ino)
        if shared is None:
            return
        shared[1] -= 1
        if shared[1] <= 0:
            del self._backing[node.ino]
            if self._backing_close is not None:
                try:
                    self._backing_close(shared[0])
                except OSError as exc:
                    log.warning("closing backing id %d: %s", shared[0], exc)

    def fsync(self, req: Request, fh: int, datasync: bool) -> bytes:
        if fh >= VIRTUAL_BASE:
            return b""
        (os.fdatasync if datasync else os.fsync)(fh)
        return b""

    def fallocate(self, req: Request, fh: int, offset: int, length: int, mode: int) -> bytes:
        if fh >= VIRTUAL_BASE:
            raise ReadOnly()
        syscalls.fallocate(fh, mode, offset, length)
        with self._lock:
            handle = self._files.get(fh)
            if handle is not None:
                handle.wrote = True
                self._record(ChangeKind.WRITE, handle.node)
        return b""

    def lseek(self, req: Request, fh: int, offset: int, whence: int) -> bytes:
        if fh >= VIRTUAL_BASE:
            raise OSError(errno.ENOSYS, "lseek")
        return replies.lseek_out(os.lseek(fh, offset, whence))

    def copy_file_range(
        self, req: Request, fh_in: int, off_in: int, node_out: int, fh_out: int, off_out: int,
        length: int, flags: int,
    ) -> bytes:  # fmt: skip
        if fh_in >= VIRTUAL_BASE or fh_out >= VIRTUAL_BASE:
            raise OSError(errno.EXDEV, "snapshot files are not copied in the kernel")
        copied = os.copy_file_range(fh_in, fh_out, length, off_in, off_out)
        with self._lock:
            handle = self._files.get(fh_out)
            if handle is not None and copied:
                handle.wrote = True
                self._record(ChangeKind.WRITE, handle.node)
        return replies.write_out(copied)

    # --- directories -----------------------------------------------------------------
    def opendir(self, req: Request, flags: int) -> bytes:
        with self._lock:
            if req.nodeid >= VIRTUAL_BASE:
                return self._snapshot_view().opendir(req.nodeid)
            node = self.inodes.get(req.nodeid)
            fd = os.open(
                b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.inodes.dir_fd(node)
            )
            self._dirs[fd] = _OpenDir(node, fd)
            return replies.open_out(fd)

    def readdir(self, req: Request, fh: int, offset: int, size: int, plus: bool) -> bytes:
        with self._lock:
            if fh >= VIRTUAL_BASE:
                return self._snapshot_view().readdir(fh, offset, size, plus)
            handle = self._dirs[fh]
            node = handle.node
            if handle.entries is None or offset == 0:
                names = [os.fsencode(n) for n in os.listdir(fh)]
                if node.ino == ROOT_INODE:
                    names = [n for n in names if n != RESERVED_ROOT_NAME]
                handle.entries = [b".", b"..", *names]
            entries = handle.entries
            dir_fd = self.inodes.dir_fd(node)
            buffer = replies.DirentBuffer(size, plus)
            for index in range(offset, len(entries)):
                name = entries[index]
                try:
                    if index == 0:
                        st = self._stat(node)
                    elif index == 1 and node is self.inodes.root:
                        # The work directory's real parent, as a native listing shows
                        # (never through the mount on top of it: that would wait for us).
                        st = os.stat(b"..", dir_fd=dir_fd)
                    elif index == 1:
                        st = self._stat(node.parent or node)
                    else:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the listing was taken
                if index < 2:
                    # The kernel links no node for "." and "..": only their d_ino is used.
                    if not buffer.add(name, index + 1, replies.Attr.from_stat(st), None):
                        break
                    continue
                attr = self._attr(st)
                entry = (
                    replies.entry(attr.ino, attr, CACHE_TIMEOUT, CACHE_TIMEOUT) if plus else None
                )
                if not buffer.add(name, index + 1, attr, entry):
                    break
                if plus:
                    self.inodes.remember(node, name, st)  # the kernel now holds a reference
            return buffer.payload()

    def releasedir(self, req: Request, fh: int) -> bytes:
        with self._lock:
            if fh >= VIRTUAL_BASE:
                self._snapshot_view().releasedir(fh)
                return b""
            self._dirs.pop(fh, None)
            os.close(fh)
            return b""

    def fsyncdir(self, req: Request, fh: int, datasync: bool) -> bytes:
        if fh >= VIRTUAL_BASE:
            return b""
        os.fsync(fh)
        return b""

    # --- extended attributes ---------------------------------------------------------
    def _xattr_path(self, node: Node) -> bytes:
        if not node.is_dir and node.fd is None and self._is_symlink(node):
            raise OSError(errno.EPERM, "no extended attributes on symlinks")
        return self._proc_path(node)

    def setxattr(self, req: Request, name: bytes, value: bytes, flags: int) -> bytes:
        with self._lock:
            node = self._real(req.nodeid)
            os.setxattr(self._xattr_path(node), name, value, flags)
            self._record(ChangeKind.XATTR, node)
            return b""

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        if size == 0:
            return replies.xattr_size(len(value))
        if len(value) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        return value

    def getxattr(self, req: Request, name: bytes, size: int) -> bytes:
        if req.nodeid >= VIRTUAL_BASE:
            # As in the view's own mount: no extended attributes shown.
            raise OSError(errno.ENODATA, "no extended attributes in snapshots")
        with self._lock:
            node = self.inodes.get(req.nodeid)
            path = self._xattr_path(node)
        return self._sized(os.getxattr(path, name), size)

    def listxattr(self, req: Request, size: int) -> bytes:
        if req.nodeid >= VIRTUAL_BASE:
            return self._sized(b"", size)
        with self._lock:
            node = self.inodes.get(req.nodeid)
            if not node.is_dir and node.fd is None and self._is_symlink(node):
                return self._sized(b"", size)
            names = os.listxattr(self._proc_path(node))
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def removexattr(self, req: Request, name: bytes) -> bytes:
        with self._lock:
            node = self._real(req.nodeid)
            os.removexattr(self._xattr_path(node), name)
            self._record(ChangeKind.XATTR, node)
            return b""

    def close(self) -> None:
        with self._lock:
            for fd in list(self._files):
                os.close(fd)
            for fd in list(self._dirs):
                os.close(fd)
            self._files.clear()
            self._dirs.clear()
            self._backing.clear()
            self.inodes.close_all()
