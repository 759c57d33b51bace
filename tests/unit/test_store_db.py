"""Database: the generic LMDB wrapper (tables, ranges, map growth)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dpmsfs.store.db import Database, MapResizedError, WriteTxn


def test_put_get_delete_count(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["a", "b"])
    with db.write() as txn:
        txn.put("a", b"k1", b"v1")
        assert txn.put("a", b"k1", b"other", overwrite=False) is False
        txn.put("b", b"k1", b"b-side")
    with db.read() as txn:
        assert txn.get("a", b"k1") == b"v1"
        assert txn.get("b", b"k1") == b"b-side"
        assert txn.count("a") == 1
    with db.write() as txn:
        assert txn.delete("a", b"k1")
        assert not txn.delete("a", b"k1")
    with db.read() as txn:
        assert txn.get("a", b"k1") is None
    db.close()


def test_aborted_on_exception(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["a"])
    with pytest.raises(RuntimeError), db.write() as txn:
        txn.put("a", b"k", b"v")
        raise RuntimeError("boom")
    with db.read() as txn:
        assert txn.get("a", b"k") is None
    db.close()


def test_cursor_range(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["t"])
    keys = [bytes([i]) for i in range(0, 100, 10)]
    with db.write() as txn:
        for k in keys:
            txn.put("t", k, k * 2)
    with db.read() as txn:
        assert [k for k, _ in txn.cursor_range("t")] == keys
        assert [k for k, _ in txn.cursor_range("t", bytes([15]), bytes([50]))] == keys[2:5]
        assert [k for k, _ in txn.cursor_range("t", reverse=True)] == keys[::-1]
        got = [k for k, _ in txn.cursor_range("t", bytes([15]), bytes([50]), reverse=True)]
        assert got == keys[2:5][::-1]
        got = [k for k, _ in txn.cursor_range("t", b"", bytes([200]), reverse=True)]
        assert got == keys[::-1]
        assert list(txn.cursor_range("t", bytes([200]))) == []
        assert dict(txn.cursor_range("t"))[bytes([10])] == bytes([10]) * 2
    db.close()


def test_map_grows_on_demand(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["t"], map_size=1 << 20)

    def put_one_mib(txn: WriteTxn) -> None:
        for _ in range(256):
            txn.put("t", os.urandom(16), bytes(4096))

    for _ in range(8):
        # 1 MiB per transaction: as much as the initial map, so growth must happen
        db.transact(put_one_mib)
    with db.read() as txn:
        assert txn.count("t") == 8 * 256
    assert db.map_size > 1 << 20
    db.close()


def test_map_full_in_with_block_asks_for_retry(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["t"], map_size=1 << 20)
    with pytest.raises(MapResizedError), db.write() as txn:
        for _ in range(64 << 10):
            txn.put("t", os.urandom(16), bytes(1024))
    db.close()


def test_readers_and_writer_threads(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "db"), ["t"], map_size=1 << 20)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                with db.read() as txn:
                    txn.count("t")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(20):
        db.transact(lambda txn: [txn.put("t", os.urandom(16), bytes(8192)) for _ in range(64)])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    db.close()


READER_SCRIPT = """
import sys, threading
from dpmsfs.store.db import Database
db = Database(sys.argv[1], ["t"], readonly=True)
with db.read() as txn:
    assert txn.get("t", b"first") == b"v"
print("ready", db.map_size, flush=True)
sys.stdin.readline()  # meanwhile the writer's process grows the map
found = []
def read():
    for _ in range(20):
        with db.read() as txn:
            found.append(txn.get("t", b"last"))
threads = [threading.Thread(target=read) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("read", len(found), all(v == b"end" for v in found), db.map_size, flush=True)
"""


def test_a_reader_process_adopts_a_map_grown_by_the_writer(tmp_path: Path) -> None:
    """The snapshot view (and a CLI restore) read while the daemon writes: after the
    daemon grows the map, LMDB refuses their read transactions (MDB_MAP_RESIZED) until
    they take the new size."""
    import subprocess
    import sys

    db = Database(str(tmp_path / "idx"), ["t"], map_size=2 << 20)
    with db.write() as txn:
        txn.put("t", b"first", b"v")
    with subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(tmp_path / "idx")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as reader:  # fmt: skip
        assert reader.stdout is not None and reader.stdin is not None
        ready = reader.stdout.readline().split()
        assert ready[0] == "ready", ready
        small = int(ready[1])
        for batch in range(20):  # ~80 MB: past the 64 MiB the reader mapped
            db.transact(lambda txn, b=batch: [txn.put("t", b"k%d-%d" % (b, i), os.urandom(4096))
                                              for i in range(1000)])  # fmt: skip
        with db.write() as txn:
            txn.put("t", b"last", b"end")
        assert db.map_size > small
        reader.stdin.write("\n")
        reader.stdin.flush()
        done = reader.stdout.readline().split()
        assert done[:3] == ["read", "80", "True"], done
        assert int(done[3]) >= db.map_size
    db.close()
