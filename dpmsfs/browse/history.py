"""File history across snapshots, and differences between two snapshots."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from chunker import chunk_id
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.tree import EntryType, TreeEntry


class CachedReader(SnapshotReader):
    """Consecutive snapshots share most trees: decode each tree once."""

    def __init__(self, reader: SnapshotReader, size: int = 256) -> None:
        super().__init__(reader.source)
        self._cache: OrderedDict[bytes, list[TreeEntry]] = OrderedDict()
        self._size = size

    def tree(self, tree_id: bytes) -> list[TreeEntry]:
        cached = self._cache.get(tree_id)
        if cached is not None:
            self._cache.move_to_end(tree_id)
            return cached
        entries = super().tree(tree_id)
        self._cache[tree_id] = entries
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return entries


class Version(NamedTuple):
    """One captured state of a path, and the snapshots that hold it (newest first)."""

    entry: TreeEntry
    content_id: str  # short id of the whole content, for people to compare
    snapshots: list[SnapshotRecord]


def content_id(entry: TreeEntry) -> str:
    if entry.type == EntryType.SYMLINK:
        return chunk_id(entry.target).hex()[:12]
    return chunk_id(b"".join(entry.content)).hex()[:12]


def _same_version(a: TreeEntry, b: TreeEntry) -> bool:
    return (a.type, a.content, a.target, a.mode, a.uid, a.gid, a.size, a.mtime_ns) == (
        b.type, b.content, b.target, b.mode, b.uid, b.gid, b.size, b.mtime_ns
    )  # fmt: skip


def file_history(reader: SnapshotReader, path: bytes) -> list[Version]:
    """Versions of `path`, newest first; works for paths deleted since."""
    cached = CachedReader(reader)
    records = reader.source.list_snapshots()
    versions: list[Version] = []
    for record in reversed(records):
        entry = cached.lookup(record.root_tree_id, path)
        if entry is None:
            continue
        if versions and _same_version(versions[-1].entry, entry):
            versions[-1].snapshots.append(record)
        else:
            versions.append(Version(entry, content_id(entry), [record]))
    return versions


class Change(NamedTuple):
    kind: str  # "+" added, "-" removed, "M" content changed, "m" metadata only
    path: bytes


def diff_trees(
    reader: SnapshotReader, a: bytes | None, b: bytes | None, base: bytes = b""
) -> Iterator[Change]:
    """Changes from tree `a` to tree `b`; identical subtrees are skipped without reading."""
    if a == b:
        return
    old = {e.name: e for e in reader.tree(a)} if a else {}
    new = {e.name: e for e in reader.tree(b)} if b else {}
    for name in sorted(old.keys() | new.keys()):
        path = base + b"/" + name if base else name
        before, after = old.get(name), new.get(name)
        if before is None and after is not None:
            yield Change("+", path)
            if after.type == EntryType.DIR:
                yield from diff_trees(reader, None, after.content[0], path)
        elif after is None and before is not None:
            if before.type == EntryType.DIR:
                yield from diff_trees(reader, before.content[0], None, path)
            yield Change("-", path)
        elif before is not None and after is not None:
            if before.type != after.type:
                yield Change("-", path)
                yield Change("+", path)
                continue
            if after.type == EntryType.DIR:
                if before.content != after.content:
                    yield from diff_trees(reader, before.content[0], after.content[0], path)
                if (before.mode, before.uid, before.gid) != (after.mode, after.uid, after.gid):
                    yield Change("m", path)
            elif (before.content, before.target, before.size) != (
                after.content, after.target, after.size
            ):  # fmt: skip
                yield Change("M", path)
            elif not _same_version(before, after) or before.xattrs != after.xattrs:
                yield Change("m", path)
