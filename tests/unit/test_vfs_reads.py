"""SnapshotTree reads without FUSE: exact bytes from many threads, each chunk decoded once."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from dpmsfs.browse import vfs
from dpmsfs.browse.vfs import SnapshotTree
from tests.unit.store_util import new_store, snapshot


@pytest.fixture
def opened(tmp_path: Path) -> tuple[SnapshotTree, int, bytes]:
    """(tree, ino of a 24 MiB file in a snapshot, its bytes)."""
    data = random.Random(9).randbytes(24 << 20)  # several chunks
    store = new_store(str(tmp_path / "s"))
    name = snapshot(store, {"big.bin": data})
    tree = SnapshotTree(store)
    snap = tree.lookup(tree.root().ino, name.encode())
    node = tree.lookup(snap.ino, b"big.bin")
    return tree, node.ino, data


def test_concurrent_reads_are_exact_and_decode_each_chunk_once(
    opened: tuple[SnapshotTree, int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, ino, data = opened
    fh = tree.open(ino, os.O_RDONLY)
    decoded: list[int] = []
    real = SnapshotTree._decode_chunk

    def counting(self: SnapshotTree, handle: vfs.OpenFile, index: int) -> bytes:
        decoded.append(index)
        return real(self, handle, index)

    monkeypatch.setattr(SnapshotTree, "_decode_chunk", counting)
    chunks = len(tree._files[fh].locations)
    assert chunks >= 5
    step = 1 << 20  # as the kernel reads ahead: 1 MiB requests, several in flight
    offsets = list(range(0, len(data), step))
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def reader(mine: list[int]) -> None:
        barrier.wait()
        for offset in mine:
            if tree.read(fh, offset, step) != data[offset : offset + step]:
                errors.append(f"wrong bytes at {offset}")

    # Neighbouring requests on different threads, in order, as read-ahead sends them.
    threads = [threading.Thread(target=reader, args=(offsets[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Every chunk decoded; a chunk again only if it left the small per-file cache.
    assert set(decoded) == set(range(chunks))
    assert len(decoded) < 2 * chunks


def test_random_reads_past_the_end_and_a_failed_chunk(
    opened: tuple[SnapshotTree, int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, ino, data = opened
    fh = tree.open(ino, os.O_RDONLY)
    rng = random.Random(4)
    for _ in range(200):
        offset = rng.randrange(0, len(data) + 1000)
        size = rng.choice([1, 4096, 131072, 1 << 20, 3 << 20])
        assert tree.read(fh, offset, size) == data[offset : offset + size]

    # A chunk that fails to decode is EIO for every waiter, and tried again next time.
    fh2 = tree.open(ino, os.O_RDONLY)
    real = SnapshotTree._decode_chunk
    failures = [1]

    def flaky(self: SnapshotTree, handle: vfs.OpenFile, index: int) -> bytes:
        if failures:
            failures.pop()
            raise OSError(5, "chunk unreadable")
        return real(self, handle, index)

    monkeypatch.setattr(SnapshotTree, "_decode_chunk", flaky)
    with pytest.raises(OSError):
        tree.read(fh2, 0, 4096)
    assert tree.read(fh2, 0, 4096) == data[:4096]
