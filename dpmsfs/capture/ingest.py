"""Capture one path of the real work directory into the store.

Runs on worker threads, never on the FUSE loop: reading, chunking, hashing and
compressing release the GIL, so two threads use two cores. The work directory is
reached through the daemon's descriptor of the real directory, one component at a
time with O_NOFOLLOW: a path from the journal can never lead outside it, even if a
component was replaced by a symlink meanwhile.

A file that changes while it is read (size, mtime or ctime differ before and after, or
fewer bytes than its size) is reported `Unstable` and retried later: never stored torn.
The one exception is asked for by the engine (`accept_growth`) after a file was unstable
several times in a row: a file that only *grew* during the read (same inode, at least the
size it had when the read began) is then captured as the bytes it had at that moment,
with the stat of that moment. A datalog appended without pause for a whole lot is never
quiet, and this is how it is still captured every few minutes; for an append-only writer
that prefix is exact. A writer that rewrites earlier bytes in place *while* the file
grows may give a version mixing the two; the capture at its close (quiet, exact)
replaces it. The stored ctime is the one from before the read, so the next look at the
file sees it changed and captures it again.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import NamedTuple

from chunker import DEFAULT_PARAMS, iter_chunk_views
from chunker.adaptive import kind_of
from dpmsfs.capture.state import FileState
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry

log = logging.getLogger(__name__)

READ_SIZE = 4 << 20
READ_AHEAD = 16 << 20  # asked of the kernel ahead of the reads of a large file
# Files up to the chunker's minimum chunk size are one chunk whatever their content
# (FastCDC never cuts before min_size): read in one call, no chunker at all.
SMALL_FILE_BYTES = DEFAULT_PARAMS.min_size
# A directory's subtree id before its first snapshot builds it (trees need exactly one).
UNBUILT_SUBTREE = bytes(16)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME | os.O_NONBLOCK

_TYPES = {
    stat.S_IFREG: EntryType.FILE,
    stat.S_IFDIR: EntryType.DIR,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFIFO: EntryType.FIFO,
    stat.S_IFCHR: EntryType.CHARDEV,
    stat.S_IFBLK: EntryType.BLOCKDEV,
    stat.S_IFSOCK: EntryType.SOCKET,
}


class Captured(NamedTuple):
    state: FileState
    new_bytes: int  # content bytes the store did not have
    read_bytes: int


class Gone(NamedTuple):
    pass


class Unstable(NamedTuple):
    reason: str


Outcome = Captured | Gone | Unstable


class ParentDirs:
    """Keeps the directory of the last path open for the next one.

    The files of a batch come in journal order, mostly several from the same directory,
    and walking a four-deep path costs four opens and closes per file (a third of the
    Python time of ingesting small files, measured). The cached descriptor names the
    directory that was there when the walk was made, which is what the journal's keys
    (directory id + name) refer to. One per worker thread; `close` when done.
    """

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._dirs: bytes | None = None
        self._fd = -1

    def open(self, path: bytes) -> tuple[int, bytes]:
        """(descriptor of the directory holding `path`, last component); do not close it."""
        dirs, _, name = path.rpartition(b"/")
        if dirs != self._dirs or self._fd < 0:
            self.close()
            self._fd, name = open_parent(self._root_fd, path)
            self._dirs = dirs
        elif name in (b"", b".", b".."):
            raise OSError(errno.EINVAL, "bad path", os.fsdecode(path))
        return self._fd, name

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._dirs = None


def open_parent(root_fd: int, path: bytes) -> tuple[int, bytes]:
    """(fd of the directory holding `path`, last component); the caller closes the fd."""
    *dirs, name = path.split(b"/")
    fd = os.open(b".", _DIR_FLAGS, dir_fd=root_fd)
    try:
        for component in dirs:
            if component in (b"", b".", b".."):
                raise OSError(errno.EINVAL, "bad path component", os.fsdecode(path))
            next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    if name in (b"", b".", b".."):
        os.close(fd)
        raise OSError(errno.EINVAL, "bad path", os.fsdecode(path))
    return fd, name


def entry_type(mode: int) -> EntryType:
    return _TYPES[stat.S_IFMT(mode)]


def make_entry(
    name: bytes,
    st: os.stat_result,
    *,
    target: bytes = b"",
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
    content: tuple[bytes, ...] = (),
) -> TreeEntry:
    is_dir = stat.S_ISDIR(st.st_mode)
    return TreeEntry(
        name=name,
        type=entry_type(st.st_mode),
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=0 if is_dir else st.st_size,
        mtime_ns=st.st_mtime_ns,
        rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
        link_key=st.st_ino if st.st_nlink > 1 and not is_dir else 0,
        target=target,
        xattrs=xattrs,
        content=content,
    )


def _read_xattrs(fd: int) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EBADF):
            return ()
        raise
    values = []
    for name in sorted(names):
        try:
            values.append((os.fsencode(name), os.getxattr(fd, name)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return tuple(values)


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def capture(
    root_fd: int,
    path: bytes,
    store: Store,
    previous: FileState | None,
    reuse_content: bool,
    now_ns: int,
    parents: ParentDirs | None = None,
    dense: Callable[[int], bool] | None = None,
    accept_growth: bool = False,
) -> Outcome:
    """Capture `path` as it is now.

    `reuse_content`: the journal knows the data did not change (only metadata, or a
    rename): keep `previous`'s content ids when inode, size and mtime still agree.
    `parents`: a worker's cache of the last directory (else each walk is closed again).
    `dense`: see `Store.write_chunk`.
    `accept_growth`: a file that grew while being read is captured as it was when the
    read began (module docstring), not reported `Unstable`.
    """
    try:
        if parents is not None:
            parent_fd, name = parents.open(path)
        else:
            parent_fd, name = open_parent(root_fd, path)
    except FileNotFoundError:
        return Gone()
    except NotADirectoryError:
        return Gone()
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return Gone()
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=parent_fd)
            entry = make_entry(name, st, target=target)
            return Captured(FileState(entry, st.st_ctime_ns, st.st_ino, now_ns), 0, 0)
        if stat.S_ISDIR(mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent_fd)  # fmt: skip
            try:
                xattrs = _read_xattrs(fd)
            finally:
                os.close(fd)
            subtree = previous.entry.content if previous is not None else (UNBUILT_SUBTREE,)
            entry = make_entry(name, st, xattrs=xattrs, content=subtree)
            return Captured(FileState(entry, st.st_ctime_ns, st.st_ino, now_ns), 0, 0)
        if not stat.S_ISREG(mode):
            entry = make_entry(name, st)
            return Captured(FileState(entry, st.st_ctime_ns, st.st_ino, now_ns), 0, 0)
        return _capture_file(
            parent_fd, name, st, store, previous, reuse_content, now_ns, dense, accept_growth
        )
    finally:
        if parents is None:
            os.close(parent_fd)


def _capture_file(
    parent_fd: int,
    name: bytes,
    st: os.stat_result,
    store: Store,
    previous: FileState | None,
    reuse_content: bool,
    now_ns: int,
    dense: Callable[[int], bool] | None = None,
    accept_growth: bool = False,
) -> Outcome:
    fd = os.open(name, _READ_FLAGS, dir_fd=parent_fd)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_ino != st.st_ino:
            return Unstable("replaced while opening")
        xattrs = _read_xattrs(fd)
        if (
            reuse_content
            and previous is not None
            and previous.entry.type == EntryType.FILE
            and (previous.ino, previous.entry.size, previous.entry.mtime_ns)
            == (before.st_ino, before.st_size, before.st_mtime_ns)
        ):
            entry = make_entry(name, before, xattrs=xattrs, content=previous.entry.content)
            return Captured(FileState(entry, before.st_ctime_ns, before.st_ino, now_ns), 0, 0)
        if before.st_size <= SMALL_FILE_BYTES:
            return _capture_small_file(
                fd, name, before, store, now_ns, xattrs, dense, accept_growth
            )
        ids: list[bytes] = []
        new_bytes = read_bytes = 0
        offset = 0

        advised = 0 if before.st_size > READ_SIZE else before.st_size

        def readinto(buffer: memoryview) -> int:
            nonlocal offset, advised
            if offset == before.st_size:
                # End of the file as it was: skip the read that would return 0. A file
                # that grew meanwhile fails the size check below and is retried.
                return 0
            if offset + len(buffer) >= advised and advised < before.st_size:
                # Our own read-ahead window: sequential reads stay ahead of the disk
                # whatever the device's read_ahead_kb (128 KiB on many machines).
                os.posix_fadvise(fd, advised, READ_AHEAD, os.POSIX_FADV_WILLNEED)
                advised += READ_AHEAD
            count = os.preadv(fd, [buffer], offset)
            offset += count
            return count

        kind = kind_of(name)
        for chunk in iter_chunk_views(readinto, read_size=READ_SIZE):
            chunk_id, is_new = store.write_chunk(chunk, kind, dense)
            ids.append(chunk_id)
            read_bytes += len(chunk)
            if is_new:
                new_bytes += len(chunk)
        after = os.fstat(fd)
        if not same_version(before, after) or read_bytes != after.st_size:
            if not (accept_growth and read_bytes == before.st_size and _only_grew(before, after)):
                return Unstable("changed while being read")
            log.debug("%s: grew while being read; captured as it was", os.fsdecode(name))
            after = before
        entry = make_entry(name, after, xattrs=xattrs, content=tuple(ids))
        return Captured(
            FileState(entry, after.st_ctime_ns, after.st_ino, now_ns), new_bytes, read_bytes
        )
    finally:
        os.close(fd)


def _only_grew(before: os.stat_result, after: os.stat_result) -> bool:
    """Same file, and at least as long as when the read began (appended to, as far as
    stat can tell)."""
    return after.st_ino == before.st_ino and after.st_size >= before.st_size


class _SmallBuffer(threading.local):
    def __init__(self) -> None:
        self.view = memoryview(bytearray(SMALL_FILE_BYTES + 1))


_small = _SmallBuffer()


def _capture_small_file(
    fd: int,
    name: bytes,
    before: os.stat_result,
    store: Store,
    now_ns: int,
    xattrs: tuple[tuple[bytes, bytes], ...],
    dense: Callable[[int], bool] | None,
    accept_growth: bool = False,
) -> Outcome:
    """A file of at most one chunk: one read of size + 1 bytes (the extra byte shows a
    file that grew), into a per-thread buffer, straight to the store.

    Most files of a test program tree are like this (C++ sources, pattern and limit
    files): the chunker's generator, cut search and second read cost more Python time
    than the file's own bytes.
    """
    size = before.st_size
    buffer = _small.view[: size + 1]
    count = os.preadv(fd, [buffer], 0) if size else 0
    if count > size and accept_growth:
        count = size  # grew: keep the bytes it had (checked below)
    if count != size:
        return Unstable("changed while being read")
    ids: tuple[bytes, ...] = ()
    new_bytes = 0
    if count:
        chunk_id, is_new = store.write_chunk(buffer[:count], kind_of(name), dense)
        ids = (chunk_id,)
        new_bytes = count if is_new else 0
    after = os.fstat(fd)
    if not same_version(before, after):
        if not (accept_growth and _only_grew(before, after)):
            return Unstable("changed while being read")
        after = before
    entry = make_entry(name, after, xattrs=xattrs, content=ids)
    return Captured(FileState(entry, after.st_ctime_ns, after.st_ino, now_ns), new_bytes, count)
