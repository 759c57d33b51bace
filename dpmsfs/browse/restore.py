"""Put files back as a snapshot holds them.

Safety, because names come from the store and the target may be hostile:
* names are validated by `decode_tree` (never empty, `.`, `..`, or containing `/` or
  NUL) and checked again here;
* every write is relative to a directory descriptor, opened with O_NOFOLLOW one
  component at a time: a symlink in the target can never send a write elsewhere;
* a file gets its name only once written and verified: a new name is linked to an
  unnamed O_TMPFILE inode (nothing is left behind if the restore is interrupted), an
  existing file is replaced by renaming a temporary name over it (atomic); either way
  an interrupted restore never leaves a half-written file under the real name.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from chunker import chunk_id
from dpmsfs.browse.durable import start_writeback
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.errors import DpmsError
from dpmsfs.store.tree import EntryType, TreeEntry, check_name

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD = b"/proc/self/fd/%d"
PENDING_DIRS = 256  # directories kept open while their files are restored
TEMP_PREFIX = b".dpmsfs-restore-"
BATCH_FILES = 256  # small files restored by one task (one fetch from the server)


class RestoreError(DpmsError):
    pass


@dataclass
class RestoreStats:
    files: int = 0
    directories: int = 0
    other: int = 0
    bytes: int = 0
    removed: int = 0
    kept: int = 0  # files already in the target with the snapshot's content (resume)
    skipped_existing: list[str] = field(default_factory=list)


Progress = Callable[[RestoreStats], None]


class Restorer:
    """Restore entries of one snapshot under a target directory descriptor."""

    def __init__(
        self,
        reader: SnapshotReader,
        *,
        overwrite: bool,
        delete_extra: bool,
        restore_owner: bool,
        progress: Progress | None = None,
        workers: int = 2,
        keep_identical: bool = False,
        early_writeback: bool = False,
    ) -> None:
        self.reader = reader
        # A restore that ends with one syncfs (server_restore.py) starts each file's
        # write-back as soon as the file is verified, so the disk works while the rest
        # is fetched and the final sync has little left to wait for (durable.py).
        self.early_writeback = early_writeback
        self.overwrite = overwrite
        # Resuming (dpmsfs restore --server): a regular file already in the target with
        # the snapshot's size, mtime and chunk ids is kept, not fetched and written again.
        self.keep_identical = keep_identical
        # Small files are fetched together where single reads cost a round trip (the
        # server): one `read_objects` per group of up to this many bytes.
        self._batch_bytes = reader.source.batch_bytes
        self.delete_extra = delete_extra
        self.restore_owner = restore_owner and os.geteuid() == 0
        self.progress = progress
        self._tmpfile_ok = True  # O_TMPFILE works on the target (until it fails once)
        self.stats = RestoreStats()
        self._links: dict[int, tuple[int, bytes]] = {}  # link_key -> (dir fd dup, name)
        self._last_progress = 0.0
        # Files are restored on worker threads (decompression, hashing and writing
        # release the GIL): a directory waits for its files before its own metadata.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")
        self._stats_lock = threading.Lock()
        # directories whose files may still be in flight: (fd, entry or None, futures)
        self._pending_dirs: collections.deque[tuple[int, TreeEntry | None, list[Future[None]]]] = (
            collections.deque()
        )
        # Small files not yet handed to a worker, from one or more directories: (entry,
        # directory fd, that directory's futures). One group is one fetch from the server
        # whichever directories it spans: per directory, a tree of many small directories
        # cost one request each (306 requests of 1.8 MB on average for a 548 MB tree).
        self._group: list[tuple[TreeEntry, int, list[Future[None]]]] = []
        self._group_bytes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for fd, _ in self._links.values():
            os.close(fd)
        self._links.clear()

    # --- entry points ----------------------------------------------------------------
    def restore_tree(self, tree_id: bytes, target_fd: int) -> None:
        """Make directory `target_fd` hold what tree `tree_id` holds."""
        try:
            files = self._restore_children(tree_id, target_fd)
            self._pending_dirs.append((target_fd, None, files))
        finally:
            self._finish_dirs(0)

    def _restore_children(self, tree_id: bytes, target_fd: int) -> list[Future[None]]:
        """Restore a tree's entries into `target_fd`; return the futures of its files.

        Files go to the worker threads; subdirectories are walked here meanwhile. Nobody
        waits for a directory's files before moving on: the directory is queued with its
        futures (`_pending_dirs`, at most PENDING_DIRS) and finished later.
        """
        entries = self.reader.tree(tree_id)
        if self.keep_identical:  # resuming: a killed run may have left named temporaries
            for name in os.listdir(target_fd):  # (before this directory's files start)
                raw = os.fsencode(name)
                if _is_temporary(raw):
                    os.unlink(raw, dir_fd=target_fd)
        wanted = set()
        files: list[Future[None]] = []
        try:
            for entry in entries:
                check_name(entry.name)
                wanted.add(entry.name)
                if entry.type == EntryType.FILE and not entry.link_key:
                    if entry.size < self._batch_bytes // 4:
                        self._group.append((entry, target_fd, files))
                        self._group_bytes += entry.size
                        if (
                            self._group_bytes >= self._batch_bytes
                            or len(self._group) >= BATCH_FILES
                        ):
                            self._submit_group()
                    else:
                        files.append(self._pool.submit(self._restore_entry, entry, target_fd))
                else:
                    self._restore_entry(entry, target_fd)
        except BaseException:
            # Nothing of this directory may stay queued or in flight: they use target_fd,
            # which the caller closes (the group's other files are dropped too: the
            # restore fails as a whole).
            self._group.clear()
            self._group_bytes = 0
            for future in files:
                future.exception()
            raise
        if self.delete_extra:
            for name in os.listdir(target_fd):
                raw = os.fsencode(name)
                if raw not in wanted and not raw.startswith(TEMP_PREFIX):
                    remove_tree_at(target_fd, raw)
                    self.stats.removed += 1
        return files

    def _submit_group(self) -> None:
        """Hand the small files collected so far to a worker, as one task; its future
        joins the futures of every directory it writes into."""
        if not self._group:
            return
        group = self._group
        self._group = []
        self._group_bytes = 0
        future = self._pool.submit(self._restore_batch, [(e, fd) for e, fd, _ in group])
        for files in {id(f): f for _, _, f in group}.values():
            files.append(future)

    def _finish_dirs(self, keep: int) -> None:
        """Finish queued directories, oldest first, until at most `keep` remain: wait for
        their files, then set their own metadata (after every change inside them).

        Oldest first is children before parents: a directory is queued once everything
        below it was queued. Every queued descriptor is closed, even after a failure.
        """
        error: BaseException | None = None
        while len(self._pending_dirs) > keep:
            fd, entry, files = self._pending_dirs.popleft()
            if any(f is files for _, _, f in self._group):
                self._submit_group()  # holds some of this directory's files
            try:
                for future in files:
                    future.exception()  # all of them, before raising anything
                if error is None:
                    for future in files:
                        future.result()
                    if entry is not None:
                        self._apply_metadata(fd, entry)
            except BaseException as exc:
                error = error or exc
            finally:
                if entry is not None:
                    os.close(fd)
        if error is not None:
            raise error

    def restore_entry(self, entry: TreeEntry, parent_fd: int) -> None:
        """Restore one entry (a directory: everything below it) into `parent_fd`."""
        try:
            self._restore_entry(entry, parent_fd)
        finally:
            self._finish_dirs(0)

    def _restore_entry(self, entry: TreeEntry, parent_fd: int) -> None:
        check_name(entry.name)
        if entry.type == EntryType.DIR:
            self._restore_dir(entry, parent_fd)
        elif entry.type == EntryType.FILE:
            self._restore_file(entry, parent_fd)
        else:
            self._restore_special(entry, parent_fd)
        self._report()

    # --- kinds of entries ------------------------------------------------------------
    def _existing(self, parent_fd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _clear_way(self, parent_fd: int, name: bytes, keep_dir: bool) -> bool:
        """Make room for `name`; False if it exists and may not be replaced."""
        st = self._existing(parent_fd, name)
        if st is None:
            return True
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        if not self.overwrite:
            self.stats.skipped_existing.append(os.fsdecode(name))
            return False
        remove_tree_at(parent_fd, name)
        return True

    def _restore_dir(self, entry: TreeEntry, parent_fd: int) -> None:
        existing = self._existing(parent_fd, entry.name)
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            if not self._clear_way(parent_fd, entry.name, keep_dir=False):
                return
            existing = None
        if existing is None:
            os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
        fd = os.open(entry.name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            files = self._restore_children(entry.content[0], fd)
        except BaseException:
            os.close(fd)
            raise
        self._pending_dirs.append((fd, entry, files))  # closed by _finish_dirs
        self._finish_dirs(PENDING_DIRS)
        self.stats.directories += 1

    def _restore_batch(self, files: list[tuple[TreeEntry, int]]) -> None:
        """Restore small files (entry, directory fd) with one fetch of all their chunks."""
        todo = [(e, fd) for e, fd in files if not self._kept(e, fd)]
        wanted = list(dict.fromkeys(c for e, _ in todo for c in e.content))
        contents = dict(zip(wanted, self.reader.source.read_objects(wanted), strict=True))
        for entry, parent_fd in todo:
            check_name(entry.name)
            self._restore_file(entry, parent_fd, contents, checked=True)
            self._report()

    def _kept(self, entry: TreeEntry, parent_fd: int) -> bool:
        """Whether the file is already in the target as the snapshot has it (then its
        metadata is set again and it counts as restored)."""
        if not self.keep_identical:
            return False
        st = self._existing(parent_fd, entry.name)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        if st.st_mtime_ns != entry.mtime_ns:  # set last: a file we finished has it
            return False
        try:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return False
        try:
            if not _content_matches(fd, entry):
                return False
            self._apply_metadata(fd, entry)
        finally:
            os.close(fd)
        with self._stats_lock:
            self.stats.files += 1
            self.stats.kept += 1
        return True

    def _restore_file(
        self,
        entry: TreeEntry,
        parent_fd: int,
        contents: dict[bytes, bytes] | None = None,
        checked: bool = False,
    ) -> None:
        if entry.link_key:
            first = self._links.get(entry.link_key)
            if first is not None:
                if self._clear_way(parent_fd, entry.name, keep_dir=False):
                    os.link(first[1], entry.name, src_dir_fd=first[0], dst_dir_fd=parent_fd,
                            follow_symlinks=False)  # fmt: skip
                    self.stats.files += 1
                return
        if not checked and self._kept(entry, parent_fd):
            if entry.link_key:
                self._links[entry.link_key] = (os.dup(parent_fd), entry.name)
            return
        existing = self._existing(parent_fd, entry.name)
        replaceable = existing is None or (self.overwrite and not stat.S_ISDIR(existing.st_mode))
        if not replaceable and not self._clear_way(parent_fd, entry.name, keep_dir=False):
            return
        fd, temp = self._open_unnamed(parent_fd) if existing is None else (-1, b"")
        if fd < 0:
            temp = TEMP_PREFIX + os.urandom(6).hex().encode()
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent_fd)  # fmt: skip
        try:
            written = 0
            lengths = []
            chunks = (
                self.reader.iter_content(entry)
                if contents is None
                else (contents[c] for c in entry.content)
            )
            for data in chunks:
                _write_all(fd, data)
                lengths.append(len(data))
                written += len(data)
                with self._stats_lock:
                    self.stats.bytes += len(data)
                self._report()
            if written != entry.size:
                raise RestoreError(
                    f"{os.fsdecode(entry.name)}: snapshot says {entry.size} bytes, "
                    f"its chunks hold {written}"
                )
            self._verify_written(fd, entry, lengths)
            self._apply_metadata(fd, entry)
            if self.early_writeback:
                start_writeback(fd)
            if temp:
                os.rename(temp, entry.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            else:  # give the unnamed inode its name (EEXIST if one appeared meanwhile)
                os.link(_PROC_FD % fd, entry.name, dst_dir_fd=parent_fd, follow_symlinks=True)
        except BaseException:
            if temp:
                try:
                    os.unlink(temp, dir_fd=parent_fd)
                except OSError:
                    pass
            raise
        finally:
            os.close(fd)
        if entry.link_key:
            self._links[entry.link_key] = (os.dup(parent_fd), entry.name)
        with self._stats_lock:
            self.stats.files += 1

    def _open_unnamed(self, parent_fd: int) -> tuple[int, bytes]:
        """An O_TMPFILE inode in the directory, or (-1, b"") where the file system has
        none (FUSE: the work directory's own mount; then a named temporary is used).

        Measured (perf, full restore of the 2.2 GB tree): renaming temporaries cost 7 %
        of the CPU in two threads spinning on the directory's lock."""
        if not self._tmpfile_ok:
            return -1, b""
        try:
            return os.open(b".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600,
                           dir_fd=parent_fd), b""  # fmt: skip
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS):
                raise
            self._tmpfile_ok = False  # not on this target: stop asking
            return -1, b""

    def _verify_written(self, fd: int, entry: TreeEntry, lengths: list[int]) -> None:
        """Read back what was written and check each chunk's id against the snapshot's.

        The chunks were checked against their ids when read from the store; this catches
        what happened on the way to the target (a short write, a faulty disk or cache).
        """
        buffer = _verify_buffer(max(lengths, default=0))
        offset = 0
        for expected, length in zip(entry.content, lengths, strict=True):
            view = buffer[:length]
            if os.preadv(fd, [view], offset) != length or chunk_id(view) != expected:
                raise RestoreError(f"{os.fsdecode(entry.name)}: written content does not verify")
            offset += length

    def _restore_special(self, entry: TreeEntry, parent_fd: int) -> None:
        if not self._clear_way(parent_fd, entry.name, keep_dir=False):
            return
        if entry.type == EntryType.SYMLINK:
            os.symlink(entry.target, entry.name, dir_fd=parent_fd)
        elif entry.type == EntryType.FIFO:
            os.mkfifo(entry.name, 0o600, dir_fd=parent_fd)
        elif entry.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
            kind = stat.S_IFCHR if entry.type == EntryType.CHARDEV else stat.S_IFBLK
            os.mknod(entry.name, kind | 0o600, entry.rdev, dir_fd=parent_fd)
        else:  # sockets cannot be recreated meaningfully: a bound socket is a process's
            self.stats.other += 1
            return
        if self.restore_owner:
            os.chown(entry.name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        if entry.type != EntryType.SYMLINK:
            os.chmod(entry.name, entry.mode, dir_fd=parent_fd)
        os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd,
                 follow_symlinks=False)  # fmt: skip
        self.stats.other += 1

    def _apply_metadata(self, fd: int, entry: TreeEntry) -> None:
        for name, value in entry.xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                log.warning("%s: cannot restore xattr %s: %s", os.fsdecode(entry.name),
                            os.fsdecode(name), exc.strerror)  # fmt: skip
        if self.restore_owner:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)  # after chown, which clears set-id bits
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _report(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= 1.0:
            self._last_progress = now
            self.progress(self.stats)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: on a file system that fills up, write(2) first writes what
    fits and returns less, and only the next call fails with ENOSPC, which is the error
    the operator should see (not a failed read-back check)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_temporary(name: bytes) -> bool:
    """A name `_restore_file` gives a file while writing it (TEMP_PREFIX + 12 hex)."""
    rest = name[len(TEMP_PREFIX) :]
    return (
        name.startswith(TEMP_PREFIX)
        and len(rest) == 12
        and all(c in b"0123456789abcdef" for c in rest)
    )


def _content_matches(fd: int, entry: TreeEntry) -> bool:
    """Whether the open file's content cuts into exactly the entry's chunk ids.

    The chunk lengths are not in the tree: the file is cut again with the chunker's
    default parameters (those of every store today). A file cut otherwise simply does
    not match and is fetched again: slower, never wrong.
    """
    from chunker import DEFAULT_PARAMS, iter_chunk_views

    expected = iter(entry.content)
    if len(entry.content) == 1:  # one chunk: the whole file, whatever the parameters
        data = os.pread(fd, entry.size + 1, 0)
        return len(data) == entry.size and chunk_id(data) == entry.content[0]
    count = 0
    for view in iter_chunk_views(lambda buf: os.readv(fd, [buf]), DEFAULT_PARAMS):
        if chunk_id(view) != next(expected, None):
            return False
        count += 1
    return count == len(entry.content)


class _VerifyBuffers(threading.local):
    def __init__(self) -> None:
        self.buffer = bytearray()


_verify_buffers = _VerifyBuffers()


def _verify_buffer(size: int) -> memoryview:
    """A per-thread buffer of at least `size` bytes for reading back what was written:
    a fresh multi-MiB bytes per chunk costs page faults and zeroing (the same finding
    as on the ingest side), more than the copy itself."""
    if len(_verify_buffers.buffer) < size:
        _verify_buffers.buffer = bytearray(size)
    return memoryview(_verify_buffers.buffer)


def remove_tree_at(parent_fd: int, name: bytes) -> None:
    """rm -rf of `name` in `parent_fd`, never following symlinks."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            remove_tree_at(fd, os.fsencode(child))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def open_dir_beneath(root_fd: int, path: bytes, create: bool) -> int:
    """A descriptor of directory `path` under `root_fd`, one component at a time."""
    fd = os.dup(root_fd)
    try:
        for part in [p for p in path.split(b"/") if p]:
            check_name(part)
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RestoreError(
                        f"{os.fsdecode(path)}: a component is not a directory (or a symlink)"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def iter_parts(path: bytes) -> Iterator[bytes]:
    return (p for p in path.split(b"/") if p)
