"""Store: dedup, flush and reopen, refusals, lock, snapshots, threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dpmsfs.store import (
    ObjectNotFoundError,
    ObjectType,
    SnapshotRecord,
    Store,
    StoreError,
    StoreLockedError,
    schema,
    verify,
)
from dpmsfs.store.packs import pack_path
from tests.unit.store_util import IDENTITY, T0, new_store, random_files, snapshot


def test_dedup_and_read_back_before_and_after_flush(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    data = os.urandom(10_000) + bytes(10_000)
    oid, new = store.write_chunk(data)
    assert new
    assert store.write_chunk(data) == (oid, False)  # pending in the open pack
    assert store.read_object(oid) == data  # unflushed but readable
    assert store.has_object(oid) and not store.is_indexed(oid)
    store.flush()
    assert store.is_indexed(oid)
    assert store.write_chunk(data) == (oid, False)  # indexed
    assert store.stats().objects == 1
    assert store.stats().raw_bytes == len(data)
    assert store.stats().stored_bytes < len(data)
    store.close()
    store = Store.open(str(tmp_path / "s"), IDENTITY)
    assert store.read_object(oid) == data
    with pytest.raises(ObjectNotFoundError):
        store.read_object(bytes(16))
    assert verify(store, read_data=True).ok
    store.close()


def test_unflushed_objects_are_gone_after_reopen(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    oid, _ = store.write_chunk(b"never flushed")
    store.close()
    store = Store.open(str(tmp_path / "s"))
    assert not store.has_object(oid)
    assert os.listdir(store.tmp_dir) == []
    store.close()


def test_packs_rotate_at_target_size(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), pack_size=64 << 10)
    ids = [store.write_chunk(os.urandom(16 << 10))[0] for _ in range(20)]
    # full packs are sealed and indexed as they fill, before any flush (by the
    # background sealer: the writing threads do not wait for the fsync)
    deadline = time.monotonic() + 10
    while store.stats().packs < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.stats().packs >= 3
    store.flush()
    assert all(store.read_object(i) for i in ids)
    assert verify(store, read_data=True).ok
    store.close()


def test_two_threads_write_concurrently(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), pack_size=256 << 10)
    blobs = [os.urandom(8 << 10) for _ in range(200)]
    results: list[list[tuple[bytes, bool]]] = [[], []]

    def work(k: int) -> None:
        for b in blobs:  # both threads write the same objects: exactly one writes each
            results[k].append(store.write_chunk(b))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    new = sum(is_new for r in results for _, is_new in r)
    assert new == len(blobs)
    assert store.stats().objects == len(blobs)
    assert verify(store, read_data=True).ok
    store.close()


def test_refuses_identity_mismatch(tmp_path: Path) -> None:
    new_store(str(tmp_path / "s")).close()
    with pytest.raises(StoreError, match="refusing to mix chunk identities"):
        Store.open(str(tmp_path / "s"), "fastcdc2020-n2-min1k-avg4k-max16k-gear:00000000")
    Store.open(str(tmp_path / "s"), IDENTITY).close()  # and the lock was released


def test_refuses_non_store_and_unknown_version(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="is not a dpmsfs store"):
        Store.open(str(tmp_path / "plain"))
    (tmp_path / "plain" / "x").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        new_store(str(tmp_path / "plain"))
    store = new_store(str(tmp_path / "s"))
    store.db.transact(
        lambda txn: txn.put(schema.T_META, schema.META_FORMAT_VERSION, schema.encode_u32(99))
    )
    store.close()
    with pytest.raises(StoreError, match="format version 99 is not supported"):
        Store.open(str(tmp_path / "s"))


def test_lock(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    with pytest.raises(StoreLockedError):
        Store.open(str(tmp_path / "s"))
    reader = Store.open(str(tmp_path / "s"), readonly=True)  # readers need no lock
    with pytest.raises(StoreError):
        reader.write_chunk(b"x")
    reader.close()
    store.close()
    Store.open(str(tmp_path / "s")).close()


def test_snapshot_needs_flushed_root_and_lists_in_order(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    assert store.latest_snapshot() is None
    root, _ = store.write_object(ObjectType.TREE, b"not flushed yet")
    with pytest.raises(StoreError, match="not flushed"):
        store.add_snapshot(SnapshotRecord("2024-05-01T120000Z", T0, root))
    names = [snapshot(store, random_files(3, 1000, seed=i), T0 + (i // 2) * 10**9)
             for i in range(5)]  # fmt: skip
    assert names == [
        "2024-05-01T120000Z",
        "2024-05-01T120000Z-2",
        "2024-05-01T120001Z",
        "2024-05-01T120001Z-2",
        "2024-05-01T120002Z",
    ]
    listed = list(store.list_snapshots())
    assert [r.name for r in listed] == names
    assert store.latest_snapshot() == listed[-1]
    assert store.get_snapshot(names[1]) == listed[1]
    assert store.get_snapshot("nope") is None
    with pytest.raises(StoreError, match="already exists"):
        store.add_snapshot(listed[0])
    assert verify(store, read_data=True).ok
    store.close()


def test_snapshot_trees_read_back(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    files = random_files(10, 50_000, seed=1)
    name = snapshot(store, files)
    record = store.get_snapshot(name)
    assert record is not None
    top = {e.name: e for e in store.read_tree(record.root_tree_id)}
    d0 = {e.name: e for e in store.read_tree(top[b"d0"].content[0])}
    assert b"".join(store.read_object(c) for c in d0[b"f0.bin"].content) == files["d0/f0.bin"]
    store.close()


def test_pack_files_are_where_the_format_says(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    oid, _ = store.write_chunk(b"hello" * 100)
    store.flush()
    loc = store.locate(oid)
    assert loc is not None
    assert os.path.isfile(pack_path(store.packs_dir, loc.pack_id))
    store.close()


def test_chunks_of_a_kind_and_reused_buffers_read_back(tmp_path: Path) -> None:
    """The ingest path: chunks given as views of a buffer that is overwritten right after
    (raw frames are written from the view itself), with a file kind choosing the level."""
    store = new_store(str(tmp_path / "s"))
    buffer = bytearray(64 << 10)
    view = memoryview(buffer)
    written: dict[bytes, bytes] = {}
    for i in range(24):
        if i % 2:
            view[:] = os.urandom(len(buffer))  # incompressible: raw frames
        else:
            line = b"%06d,PASS,1.25\n" % i
            view[:] = (line * (len(buffer) // len(line) + 1))[: len(buffer)]
        oid, _ = store.write_chunk(view, b"stdf" if i % 3 else b"so")
        written[oid] = bytes(buffer)
        view[:] = bytes(len(buffer))  # the reader reuses its buffer at once
    store.flush()
    for oid, data in written.items():
        assert store.read_object(oid) == data
    assert {r.kind for r in store.compressor.report()} == {"stdf", "so"}
    assert verify(store, read_data=True).ok
    store.close()


def test_pack_records_written_in_parts_match_joined(tmp_path: Path) -> None:
    from dpmsfs.store.packs import PackWriter, read_record

    (tmp_path / "tmp").mkdir()
    (tmp_path / "packs").mkdir()
    writer = PackWriter(str(tmp_path / "tmp"), str(tmp_path / "packs"), bytes(16))
    one = writer.append(1, b"a" * 16, (b"\x01head", memoryview(b"payload" * 1000)), 7000)
    two = writer.append(1, b"b" * 16, b"\x00" + b"joined", 6)
    empty_part = writer.append(1, b"c" * 16, (b"\x00", b""), 0)
    assert read_record(writer._fd, one, 5 + 7000, b"a" * 16, "p") == (
        1,
        b"\x01head" + b"payload" * 1000,
    )
    assert read_record(writer._fd, two, 7, b"b" * 16, "p") == (1, b"\x00joined")
    assert read_record(writer._fd, empty_part, 1, b"c" * 16, "p") == (1, b"\x00")
    writer.discard()
