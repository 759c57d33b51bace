"""`.snapshots/` reads of objects missing from the local store come from the server
(SnapshotTree without FUSE; the real mount is in tests/browse/test_server_cli.py)."""

from __future__ import annotations

import errno
import logging
import os
import random
from pathlib import Path

import pytest

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.source import RemoteSource
from dpmsfs.browse.vfs import SnapshotTree
from dpmsfs.store import schema
from dpmsfs.store.store import Store
from tests.browse.counting import CountingBackend
from tests.browse.upload import upload_snapshot
from tests.unit.store_util import new_store, snapshot

DATA = random.Random(5).randbytes(5 << 20)  # several chunks


def forget_locally(store: Store, oids: list[bytes]) -> None:
    """Drop objects from the local index, as a lost pack or an old prune would leave it."""
    with store.db.write() as txn:
        for oid in oids:
            txn.delete(schema.T_OBJECTS, oid)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, CountingBackend, str, list[bytes]]:
    store = new_store(str(tmp_path / "s"))
    name = snapshot(store, {"dir/big.bin": DATA, "small.txt": b"hello"})
    backend = CountingBackend()
    upload_snapshot(store, backend, name)
    reader = SnapshotReader(store)
    root = reader.snapshot(name).root_tree_id
    entry = reader.lookup(root, b"dir/big.bin")
    assert entry is not None and len(entry.content) > 2
    return store, backend, name, list(entry.content)


def read_big(tree: SnapshotTree, name: str) -> bytes:
    snap = tree.lookup(tree.root().ino, name.encode())
    node = tree.lookup(tree.lookup(snap.ino, b"dir").ino, b"big.bin")
    fh = tree.open(node.ino, os.O_RDONLY)
    try:
        return b"".join(tree.read(fh, off, 1 << 20) for off in range(0, len(DATA), 1 << 20))
    finally:
        tree.release(fh)


def test_chunks_missing_locally_are_read_from_the_server(
    setup: tuple[Store, CountingBackend, str, list[bytes]],
) -> None:
    store, backend, name, chunks = setup
    gone = [chunks[0], chunks[-1]]
    forget_locally(store, gone)
    with pytest.raises(OSError) as raised:
        read_big(SnapshotTree(store), name)  # no server: EIO as before
    assert raised.value.errno == errno.EIO
    assert read_big(SnapshotTree(store, RemoteSource(backend)), name) == DATA
    assert sorted(backend.downloads) == sorted(c.hex() for c in gone)  # only those


def test_a_tree_missing_locally_is_read_from_the_server(
    setup: tuple[Store, CountingBackend, str, list[bytes]],
) -> None:
    store, backend, name, _ = setup
    reader = SnapshotReader(store)
    root = reader.snapshot(name).root_tree_id
    dir_entry = reader.lookup(root, b"dir")
    assert dir_entry is not None
    forget_locally(store, [dir_entry.content[0]])
    assert read_big(SnapshotTree(store, RemoteSource(backend)), name) == DATA


def test_a_chunk_the_server_lacks_too_stays_eio_with_a_log_line(
    setup: tuple[Store, CountingBackend, str, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    store, backend, name, chunks = setup
    forget_locally(store, [chunks[1]])
    del backend.mapping[chunks[1].hex()]
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as raised:
        read_big(SnapshotTree(store, RemoteSource(backend)), name)
    assert raised.value.errno == errno.EIO
    assert chunks[1].hex() in caplog.text and "server" in caplog.text


def test_a_corrupt_chunk_from_the_server_is_eio_not_wrong_bytes(
    setup: tuple[Store, CountingBackend, str, list[bytes]],
) -> None:
    store, backend, name, chunks = setup
    forget_locally(store, [chunks[1]])
    backend.corrupt(chunks[1].hex())
    with pytest.raises(OSError) as raised:
        read_big(SnapshotTree(store, RemoteSource(backend)), name)
    assert raised.value.errno == errno.EIO
