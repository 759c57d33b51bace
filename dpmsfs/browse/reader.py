"""Read what a snapshot holds, straight from the store (no mount needed).

Used by `.snapshots/` in the mount, by `dpmsfs log`, `diff` and `restore`, and by tests
to check what was captured. Names come from trees, which `decode_tree` validated: a
name is never empty, `.`, `..`, or contains `/` or NUL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from dpmsfs.browse.source import ObjectSource, StoreSource, read_tree
from dpmsfs.errors import NotFoundError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry, find

READ_AHEAD_CHUNKS = 8  # chunks per request of a large file of unknown size (source.py)


class SnapshotReader:
    """Snapshots of one object source: the local store (a `Store` is taken as such), the
    server, or both (dpmsfs/browse/source.py)."""

    def __init__(self, source: Store | ObjectSource) -> None:
        self.source: ObjectSource = StoreSource(source) if isinstance(source, Store) else source

    def snapshot(self, name: str) -> SnapshotRecord:
        if name == "latest":
            last = self.source.latest_snapshot()
            if last is None:
                raise NotFoundError("there are no snapshots yet")
            return last
        found = self.source.get_snapshot(name)
        if found is None:
            raise NotFoundError(f"no snapshot named {name}")
        return found

    def tree(self, tree_id: bytes) -> list[TreeEntry]:
        entries = read_tree(self.source, tree_id)
        subtrees = [e.content[0] for e in entries if e.type == EntryType.DIR]
        if subtrees:  # a walk reads them next: from the server, ask for them all now
            self.source.prefetch(subtrees)
        return entries

    def lookup(self, root_tree_id: bytes, path: bytes) -> TreeEntry | None:
        """The entry at `path` (relative, b"" for the root: None) in a snapshot's tree."""
        parts = [p for p in path.split(b"/") if p and p != b"."]
        entries = self.tree(root_tree_id)
        entry: TreeEntry | None = None
        for index, part in enumerate(parts):
            entry = find(entries, part)
            if entry is None:
                return None
            if index < len(parts) - 1:
                if entry.type != EntryType.DIR:
                    return None
                entries = self.tree(entry.content[0])
        return entry

    def iter_content(self, entry: TreeEntry) -> Iterator[bytes]:
        """The chunks of a file, in order (from the server: several fetched at once)."""
        return self.source.read_ahead(entry.content, READ_AHEAD_CHUNKS, entry.size)

    def read_file(self, entry: TreeEntry) -> bytes:
        return b"".join(self.iter_content(entry))

    def walk(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, TreeEntry]]:
        """(path, entry) of everything below a tree, depth first, sorted by name."""
        stack = [(prefix, tree_id)]
        while stack:
            base, current = stack.pop()
            subdirs = []
            for entry in self.tree(current):
                path = base + b"/" + entry.name if base else entry.name
                yield path, entry
                if entry.type == EntryType.DIR:
                    subdirs.append((path, entry.content[0]))
            stack.extend(reversed(subdirs))


def display(path: bytes) -> str:
    return os.fsdecode(path)
