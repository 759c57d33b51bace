"""The read-only `.snapshots/` tree, served from the store (no FUSE here).

`.snapshots/` holds one directory per snapshot, named by its UTC time, and a `latest`
symlink. Below a snapshot directory, entries are served from the snapshot's trees:
attributes as captured, contents read chunk by chunk from the store.

With a server configured, a chunk or tree the local store lacks (or holds corrupt) is
fetched from the tool's namespace on the server and checked against its id
(browse/source.py) instead of failing with EIO; a chunk the server lacks too is still
EIO, with a log line naming it. Fetched chunks are not written to the local store (the
view has it read-only); those fetched at `open` are kept in memory for the open file,
up to FETCHED_KEPT bytes.

Inode numbers live in their own range (`VIRTUAL_BASE` and up), handed out on lookup
and dropped when the kernel forgets them, so memory follows what the kernel holds,
not how many snapshots exist or how large they are. Hard-linked files of one snapshot
share one inode number, as they did when captured.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import stat
import threading
import typing
from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal, NamedTuple

from dpmsfs.browse.source import RemoteSource
from dpmsfs.errors import DpmsError
from dpmsfs.store import gc
from dpmsfs.store.errors import ObjectNotFoundError, StoreError
from dpmsfs.store.schema import ObjectLocation
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry, decode_tree, find

log = logging.getLogger(__name__)

VIRTUAL_BASE = 1 << 62
TREE_CACHE_ENTRIES = 100_000  # decoded entries kept (~200 bytes each): bounded memory
SNAPSHOTS_INO = VIRTUAL_BASE + 1
LATEST = b"latest"

_TYPE_BITS = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.FIFO: stat.S_IFIFO,
    EntryType.CHARDEV: stat.S_IFCHR,
    EntryType.BLOCKDEV: stat.S_IFBLK,
    EntryType.SOCKET: stat.S_IFSOCK,
}


class Attr(NamedTuple):
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    mtime_ns: int


class VNode:
    __slots__ = ("entry", "ino", "key", "lookups", "mtime_ns", "snapshot", "tree_id")

    def __init__(
        self,
        ino: int,
        key: tuple[object, ...],
        snapshot: SnapshotRecord | None,
        entry: TreeEntry | None,
        tree_id: bytes | None,
        mtime_ns: int,
    ) -> None:
        self.ino = ino
        self.key = key
        self.snapshot = snapshot
        self.entry = entry  # None for .snapshots, latest, and a snapshot's root
        self.tree_id = tree_id  # for directories
        self.mtime_ns = mtime_ns
        self.lookups = 0


CHUNKS_KEPT = 4  # decoded chunks kept per open file
FETCHED_KEPT = 64 << 20  # bytes fetched from the server at open, kept for the open file


class _ChunkSlot:
    """One chunk of an open file: decoded once, by the first reader that needs it."""

    __slots__ = ("data", "done", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data = b""
        self.failed = False


class OpenFile:
    """An open snapshot file: chunk offsets and locations, and the last chunks decoded.

    The kernel reads ahead with several requests in flight (1 MiB each in the view's
    mount), answered on several threads; a request usually spans two chunks. With only
    the last chunk kept, neighbouring requests decoded the chunk they share twice; now
    each chunk is decoded once and the others wait for it (cold `cat`: see
    docs/benchmarks.md).
    """

    def __init__(
        self,
        entry: TreeEntry,
        offsets: list[int],
        locations: list[ObjectLocation | None],
        fetched: dict[int, bytes] | None = None,
    ) -> None:
        self.entry = entry
        self.offsets = offsets  # start offset of each chunk, plus the end
        # of each chunk, looked up once at open (not per read); None: not in the local
        # store, read from the server
        self.locations = locations
        self.fetched = fetched or {}  # chunk index -> content fetched at open
        self.lock = threading.Lock()
        self.chunks: OrderedDict[int, _ChunkSlot] = OrderedDict()
        # the snapshot's prune lease (gc.lease), held from open to release
        self.lease = contextlib.ExitStack()


class ReadOnly(OSError):
    def __init__(self) -> None:
        super().__init__(errno.EROFS, "snapshots are read-only")


class SnapshotTree:
    """What `.snapshots/` shows. Thread-safe for reads from worker threads."""

    def __init__(self, store: Store, remote: RemoteSource | None = None) -> None:
        self.store = store
        self.remote = remote  # the server, for what the local store lacks
        self._nodes: dict[int, VNode] = {}
        self._by_key: dict[tuple[object, ...], VNode] = {}
        self._next_ino = SNAPSHOTS_INO + 1
        self._lock = threading.Lock()
        self._files: dict[int, OpenFile] = {}
        self._next_fh = VIRTUAL_BASE
        self._trees: OrderedDict[bytes, list[TreeEntry]] = OrderedDict()
        self._tree_entries = 0
        root = VNode(SNAPSHOTS_INO, ("root",), None, None, None, 0)
        root.lookups = 1 << 40  # never forgotten
        self._nodes[SNAPSHOTS_INO] = root

    # --- nodes -----------------------------------------------------------------------
    def is_virtual(self, ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def node(self, ino: int) -> VNode:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown snapshot inode") from None

    def _get_or_make(
        self,
        key: tuple[object, ...],
        snapshot: SnapshotRecord | None,
        entry: TreeEntry | None,
        tree_id: bytes | None,
        mtime_ns: int,
    ) -> VNode:
        node = self._by_key.get(key)
        if node is None:
            node = VNode(self._next_ino, key, snapshot, entry, tree_id, mtime_ns)
            self._next_ino += 1
            self._nodes[node.ino] = node
            self._by_key[key] = node
        return node

    def remember(self, node: VNode) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == SNAPSHOTS_INO:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[ino]
            self._by_key.pop(node.key, None)

    def root(self) -> VNode:
        return self._nodes[SNAPSHOTS_INO]

    # --- attributes ------------------------------------------------------------------
    def attr(self, node: VNode) -> Attr:
        entry = node.entry
        if node.ino == SNAPSHOTS_INO or (entry is None and node.tree_id is not None):
            return Attr(node.ino, stat.S_IFDIR | 0o555, 2, 0, 0, 0, 0, node.mtime_ns)
        if entry is None:  # latest
            last = self._latest()
            target = last.name.encode() if last else b""
            when = last.time_utc_ns if last else 0
            return Attr(node.ino, stat.S_IFLNK | 0o777, 1, 0, 0, 0, len(target), when)
        mode = _TYPE_BITS[entry.type] | entry.mode
        nlink = 2 if entry.type == EntryType.DIR or entry.link_key else 1
        size = len(entry.target) if entry.type == EntryType.SYMLINK else entry.size
        return Attr(node.ino, mode, nlink, entry.uid, entry.gid, entry.rdev, size, entry.mtime_ns)

    def getattr(self, ino: int) -> Attr:
        return self.attr(self.node(ino))

    # --- names -----------------------------------------------------------------------
    def _snapshots(self) -> list[SnapshotRecord]:
        return list(self.store.list_snapshots())

    def _latest(self) -> SnapshotRecord | None:
        return self.store.latest_snapshot()

    def _snapshot_node(self, record: SnapshotRecord) -> VNode:
        return self._get_or_make(
            ("snap", record.name), record, None, record.root_tree_id, record.time_utc_ns
        )

    def _child_node(self, parent: VNode, entry: TreeEntry) -> VNode:
        assert parent.snapshot is not None
        name = parent.snapshot.name
        if entry.link_key and entry.type != EntryType.DIR:
            key: tuple[object, ...] = ("link", name, entry.link_key)
        else:
            key = ("entry", name, parent.ino, entry.name)
        tree_id = entry.content[0] if entry.type == EntryType.DIR else None
        return self._get_or_make(key, parent.snapshot, entry, tree_id, entry.mtime_ns)

    def lookup(self, parent_ino: int, name: bytes) -> VNode:
        """The child `name` of a virtual directory (the caller counts the lookup)."""
        parent = self.node(parent_ino)
        with self._lock:
            if parent.ino == SNAPSHOTS_INO:
                if name == LATEST:
                    return self._get_or_make(("latest",), None, None, None, 0)
                record = self.store.get_snapshot(os.fsdecode(name))
                if record is None:
                    raise FileNotFoundError(errno.ENOENT, "no such snapshot")
                return self._snapshot_node(record)
            if parent.tree_id is None:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            entry = find(self._tree(parent.tree_id), name)
            if entry is None:
                raise FileNotFoundError(errno.ENOENT, "not in this snapshot")
            return self._child_node(parent, entry)

    def listdir(self, ino: int) -> Iterator[tuple[bytes, VNode]]:
        node = self.node(ino)
        with self._lock:
            if ino == SNAPSHOTS_INO:
                items = [(r.name.encode(), self._snapshot_node(r)) for r in self._snapshots()]
                if items:
                    items.append((LATEST, self._get_or_make(("latest",), None, None, None, 0)))
            elif node.tree_id is not None:
                items = [(e.name, self._child_node(node, e)) for e in self._tree(node.tree_id)]
            else:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        return iter(items)

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.key == ("latest",):
            last = self._latest()
            return last.name.encode() if last else b""
        if node.entry is None or node.entry.type != EntryType.SYMLINK:
            raise OSError(errno.EINVAL, "not a symlink")
        return node.entry.target

    def _tree(self, tree_id: bytes) -> list[TreeEntry]:
        """A decoded tree, from a small LRU: `ls -l` of a 10,000-entry directory looks
        up every name in it, and decoding the tree each time made that quadratic."""
        cached = self._trees.get(tree_id)
        if cached is not None:
            self._trees.move_to_end(tree_id)
            return cached
        try:
            entries = self.store.read_tree(tree_id)
        except StoreError as exc:
            if self.remote is None:
                log.error("snapshot tree %s unreadable from the local store: %s",
                          tree_id.hex(), exc)  # fmt: skip
                raise OSError(errno.EIO, "snapshot tree unreadable") from None
            log.warning("snapshot tree %s: %s; reading it from the server", tree_id.hex(), exc)
            entries = self._from_server(tree_id, "snapshot tree", decode=True)
        self._trees[tree_id] = entries
        self._tree_entries += len(entries)
        while self._tree_entries > TREE_CACHE_ENTRIES and len(self._trees) > 1:
            _, dropped = self._trees.popitem(last=False)
            self._tree_entries -= len(dropped)
        return entries

    # --- files -----------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise ReadOnly()
        node = self.node(ino)
        entry = node.entry
        if entry is None or entry.type != EntryType.FILE:
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        lease = contextlib.ExitStack()
        if node.snapshot is not None:  # a prune meanwhile keeps what this file reads
            try:
                lease.enter_context(gc.lease(self.store, node.snapshot.name))
            except ObjectNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "snapshot just removed by a prune") from None
        try:
            fh = self._open_leased(entry)
        except BaseException:
            lease.close()
            raise
        self._files[fh].lease = lease
        return fh

    def _open_leased(self, entry: TreeEntry) -> int:
        offsets = [0]
        locations: list[ObjectLocation | None] = []
        fetched: dict[int, bytes] = {}
        kept = 0
        for index, chunk_id in enumerate(entry.content):
            location = self.store.locate(chunk_id)
            if location is not None:
                length = location.raw_length
            elif self.remote is None:
                log.error("chunk %s of a snapshot file is not in the local store", chunk_id.hex())
                raise OSError(errno.EIO, "chunk missing from the local store")
            else:  # its length is known only from its content: fetch it now
                log.warning("chunk %s of %s is not in the local store; reading it from the "
                            "server", chunk_id.hex(), os.fsdecode(entry.name))  # fmt: skip
                data = self._from_server(chunk_id, f"chunk of {os.fsdecode(entry.name)}")
                length = len(data)
                if kept + length <= FETCHED_KEPT:
                    fetched[index] = data
                    kept += length
            offsets.append(offsets[-1] + length)
            locations.append(location)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = OpenFile(entry, offsets, locations, fetched)
        return fh

    @typing.overload
    def _from_server(self, oid: bytes, what: str, decode: Literal[True]) -> list[TreeEntry]: ...
    @typing.overload
    def _from_server(self, oid: bytes, what: str, decode: Literal[False] = False) -> bytes: ...
    def _from_server(self, oid: bytes, what: str, decode: bool = False) -> bytes | list[TreeEntry]:
        """Object `oid` from the server, checked; EIO (and a log line) if it cannot be."""
        assert self.remote is not None
        try:
            data = self.remote.read_object(oid)
            return decode_tree(data) if decode else data
        except (DpmsError, StoreError) as exc:
            log.error("%s %s: not readable from the server either: %s", what, oid.hex(), exc)
            raise OSError(errno.EIO, f"{what} unreadable") from None

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of an open snapshot file. Runs on a worker thread."""
        handle = self._files[fh]
        end = min(offset + size, handle.offsets[-1])
        parts = []
        while offset < end:
            index = bisect.bisect_right(handle.offsets, offset) - 1
            data = memoryview(self._chunk(handle, index))
            start = offset - handle.offsets[index]
            piece = data[start : start + (end - offset)]
            if not piece:
                break
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def _chunk(self, handle: OpenFile, index: int) -> bytes:
        with handle.lock:
            slot = handle.chunks.get(index)
            mine = slot is None
            if slot is None:
                slot = handle.chunks[index] = _ChunkSlot()
                while len(handle.chunks) > CHUNKS_KEPT:
                    handle.chunks.popitem(last=False)
            else:
                handle.chunks.move_to_end(index)
        if not mine:
            slot.done.wait()
            if slot.failed:
                raise OSError(errno.EIO, "chunk unreadable")
            return slot.data
        try:
            slot.data = self._decode_chunk(handle, index)
        except BaseException:
            slot.failed = True
            with handle.lock:
                if handle.chunks.get(index) is slot:
                    del handle.chunks[index]  # the next read tries again
            raise
        finally:
            slot.done.set()
        return slot.data

    def _decode_chunk(self, handle: OpenFile, index: int) -> bytes:
        chunk_id = handle.entry.content[index]
        location = handle.locations[index]
        what = f"chunk of {os.fsdecode(handle.entry.name)}"
        if location is None:
            data = handle.fetched.get(index)
            return data if data is not None else self._from_server(chunk_id, what)
        try:
            blob = self.store.read_blob(location, chunk_id)
            data = self.store.decode_blob(chunk_id, blob, location.pack_id)
        except StoreError as exc:
            if self.remote is not None:
                log.warning("cannot read chunk %s locally (%s); reading it from the server",
                            chunk_id.hex(), exc)  # fmt: skip
                return self._from_server(chunk_id, what)
            log.error(
                "cannot read chunk %s of %s: %s",
                chunk_id.hex(),
                os.fsdecode(handle.entry.name),
                exc,
            )
            raise OSError(errno.EIO, "chunk unreadable") from None
        return data

    def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.lease.close()
