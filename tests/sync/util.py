"""Helpers of the sync tests: check what a server holds through the Backend interface."""

from __future__ import annotations

from typing import Protocol

from chunker import chunk_id, decompress_chunk
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.tree import EntryType, decode_tree


class ReadBackend(Protocol):
    def load(self, id: str) -> bytes: ...

    def list_refs(self) -> list[str]: ...

    def get_ref(self, name: str) -> bytes: ...


def plain(backend: ReadBackend, oid: bytes) -> bytes:
    data = decompress_chunk(backend.load(oid.hex()))
    assert chunk_id(data) == oid, f"object {oid.hex()} does not match its id"
    return data


def read_snapshot(backend: ReadBackend, name: str) -> dict[str, bytes]:
    """Every file of snapshot `name` read back from the server, every object verified."""
    record = SnapshotRecord.decode(backend.get_ref("snapshot." + name))
    files: dict[str, bytes] = {}
    stack = [("", record.root_tree_id)]
    while stack:
        prefix, tree_id = stack.pop()
        for entry in decode_tree(plain(backend, tree_id)):
            path = prefix + entry.name.decode()
            if entry.type == EntryType.DIR:
                stack.append((path + "/", entry.content[0]))
            elif entry.type == EntryType.FILE:
                files[path] = b"".join(plain(backend, c) for c in entry.content)
    return files


def snapshots_on(backend: ReadBackend) -> list[str]:
    return [r[len("snapshot.") :] for r in backend.list_refs() if r.startswith("snapshot.")]


def assert_refs_complete(backend: ReadBackend) -> int:
    """The HA invariant: every snapshot ref on the server is fully readable."""
    names = snapshots_on(backend)
    for name in names:
        read_snapshot(backend, name)
    return len(names)
