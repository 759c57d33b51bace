"""Forgetting snapshots and reclaiming space (store/gc.py), on real stores."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store import Store, gc, verify
from dpmsfs.store.errors import ObjectNotFoundError
from tests.unit.store_util import T0, new_store, snapshot


def _files(seed: int, n: int = 6, size: int = 40_000) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 2}/f{i}": rng.randbytes(size) for i in range(n)}


def _pack_bytes(store: Store) -> int:
    total = 0
    for root, _, names in os.walk(store.packs_dir):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    return total


def _read_all(store: Store, name: str) -> dict[bytes, bytes]:
    reader = SnapshotReader(store)
    record = reader.snapshot(name)
    return {p: reader.read_file(e) for p, e in reader.walk(record.root_tree_id) if e.content
            and e.type == 1}  # fmt: skip


def _check(store: Store, expected: dict[str, dict[str, bytes]]) -> None:
    report = verify(store, read_data=True)
    assert report.ok and not report.garbage, (report.summary(), report.problems)
    for name, files in expected.items():
        got = _read_all(store, name)
        assert got == {k.encode(): v for k, v in files.items()}


def test_forget_and_collect_reclaims_space_and_keeps_the_rest(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), pack_size=64 << 10)
    shared = _files(0)
    names, contents = [], {}
    for i in range(6):
        files = shared | {f"own{i}": random.Random(100 + i).randbytes(200_000)}
        name = snapshot(store, files, T0 + i * 10**9)
        names.append(name)
        contents[name] = files
    before = _pack_bytes(store)
    stored_before = store.stats().stored_bytes

    dry = gc.collect(store, dry_run=True, skip_snapshots=names[:3])
    assert dry.dead_objects > 0 and _pack_bytes(store) == before  # dry run changes nothing

    assert gc.forget_snapshots(store, names[:3]) == names[:3]
    stats = gc.collect(store)
    assert stats.dead_objects == dry.dead_objects
    assert stats.dead_bytes > 3 * 150_000  # three 200 kB random files went
    assert stats.packs_deleted + stats.packs_repacked > 0
    after = _pack_bytes(store)
    assert before - after == stats.reclaimed_bytes > 3 * 150_000
    assert store.stats().stored_bytes == stored_before - stats.dead_bytes
    _check(store, {n: contents[n] for n in names[3:]})
    assert [r.name for r in store.list_snapshots()] == names[3:]

    again = gc.collect(store)  # nothing left to do
    assert again.dead_objects == 0 and again.reclaimed_bytes == 0
    store.close()


def test_pins_and_the_newest_are_never_forgotten(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    names = [snapshot(store, _files(i, n=2), T0 + i * 10**9) for i in range(3)]
    gc.pin(store, names[0], "golden")
    assert gc.pins(store) == {names[0]: "golden"}
    with pytest.raises(ObjectNotFoundError):
        gc.pin(store, "2000-01-01T000000Z")
    assert gc.forget_snapshots(store, names) == [names[1]]
    assert gc.unpin(store, names[0]) and not gc.unpin(store, names[0])
    assert gc.forget_snapshots(store, names) == [names[0]]
    gc.collect(store)
    _check(store, {names[2]: _files(2, n=2)})
    store.close()


def test_extra_roots_keep_capture_state_objects(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    files = _files(7, n=3)
    name = snapshot(store, files, T0)
    root = store.get_snapshot(name)
    assert root is not None
    later = snapshot(store, {"x": b"y" * 100}, T0 + 10**9)
    gc.forget_snapshots(store, [name])
    # the capture state still names the first root tree: everything under it stays
    gc.collect(store, lambda txn: [root.root_tree_id])
    assert store.read_tree(root.root_tree_id)
    gc.collect(store, lambda txn: [])
    with pytest.raises(ObjectNotFoundError):
        store.read_tree(root.root_tree_id)
    _check(store, {later: {"x": b"y" * 100}})
    store.close()


def test_a_damaged_tree_aborts_before_anything_is_swept(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    name = snapshot(store, _files(3, n=2), T0)
    other = snapshot(store, _files(4, n=2), T0 + 10**9)
    record = store.get_snapshot(other)
    assert record is not None
    loc = store.locate(record.root_tree_id)
    assert loc is not None
    path = os.path.join(store.packs_dir, loc.pack_id.hex()[:2], loc.pack_id.hex() + ".pack")
    with open(path, "r+b") as f:
        f.seek(loc.offset + 30)
        f.write(b"\xff\xff\xff")
    store.drop_pack_handle(loc.pack_id)
    gc.forget_snapshots(store, [name])
    objects = store.stats().objects
    with pytest.raises(gc.CollectionAbortedError):
        gc.collect(store)
    assert store.stats().objects == objects
    store.close()


def test_readers_follow_a_repacked_object(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), pack_size=1 << 20)
    keep = {"keep": random.Random(1).randbytes(10_000)}
    gone = {"gone": random.Random(2).randbytes(500_000)}
    first = snapshot(store, gone | keep, T0)  # one pack: 'keep' shares it with 'gone'
    name = snapshot(store, keep, T0 + 10**9)
    record = store.get_snapshot(name)
    assert record is not None
    entry = SnapshotReader(store).lookup(record.root_tree_id, b"keep")
    assert entry is not None
    old = store.locate(entry.content[0])
    assert old is not None
    gc.forget_snapshots(store, [first])
    stats = gc.collect(store)
    assert stats.packs_repacked == 1
    new = store.locate(entry.content[0])
    assert new is not None and new.pack_id != old.pack_id
    # a reader that looked the chunk up before the repack still gets its bytes
    assert store.decode_blob(entry.content[0], store.read_blob(old, entry.content[0]), None) \
        == keep["keep"]  # fmt: skip
    store.close()


def test_a_reader_process_frees_deleted_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only store (the snapshot view's process) closes fds of packs pruned away."""
    from dpmsfs.store import store as store_module

    writer = new_store(str(tmp_path / "s"))
    first = snapshot(writer, {"big": random.Random(9).randbytes(300_000)}, T0)
    snapshot(writer, {"small": b"x"}, T0 + 10**9)
    reader = Store.open(str(tmp_path / "s"), readonly=True)
    assert _read_all(reader, first)  # caches an fd on the first snapshot's pack
    gc.forget_snapshots(writer, [first])
    gc.collect(writer)
    cached = list(reader._handles.values())
    assert any(os.fstat(h.fd).st_nlink == 0 for h in cached)
    monkeypatch.setattr(store_module, "_HANDLE_CHECK_SECONDS", 0.0)
    record = reader.latest_snapshot()
    assert record is not None
    reader.read_tree(record.root_tree_id)
    assert all(os.fstat(h.fd).st_nlink > 0 for h in reader._handles.values())
    reader.close()
    writer.close()


def test_a_leased_snapshot_keeps_its_objects_until_released(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    files = _files(11, n=2)
    name = snapshot(store, files, T0)
    snapshot(store, {"x": b"1"}, T0 + 10**9)
    with gc.lease(store, name) as record:
        assert gc.forget_snapshots(store, [name]) == [name]
        gc.collect(store)
        reader = SnapshotReader(store)
        got = {p: reader.read_file(e) for p, e in reader.walk(record.root_tree_id) if e.type == 1}
        assert got == {k.encode(): v for k, v in files.items()}
    assert gc.collect(store).dead_objects > 0
    with pytest.raises(ObjectNotFoundError):
        store.read_tree(record.root_tree_id)
    with pytest.raises(ObjectNotFoundError), gc.lease(store, name):
        pass
    store.close()


def test_a_lease_of_a_killed_reader_is_released(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "s")
    store = new_store(path)
    name = snapshot(store, _files(12, n=2), T0)
    snapshot(store, {"x": b"1"}, T0 + 10**9)
    code = (
        "import sys, time\n"
        "from dpmsfs.store import Store, gc\n"
        f"s = Store.open({path!r}, readonly=True)\n"
        f"with gc.lease(s, {name!r}):\n"
        "    print('leased', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "leased"
    gc.forget_snapshots(store, [name])
    assert gc.collect(store).dead_objects == 0  # the other process's lease holds
    assert len(gc.leased_roots(store)) == 1
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert gc.collect(store).dead_objects > 0  # its flock died with it
    assert os.listdir(os.path.join(path, gc.LEASES)) == []
    store.close()


def test_a_lease_released_while_the_collector_looks_at_it_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader finishing (unlink, then close) between the collector's open and unlink."""
    store = new_store(str(tmp_path / "s"))
    name = snapshot(store, _files(13, n=2), T0)
    real_open = os.open

    def open_then_reader_finishes(path: str, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        if os.path.dirname(path).endswith(gc.LEASES):
            os.unlink(path)  # what the reader's `finally` does first
            lease_cm.__exit__(None, None, None)
        return fd

    lease_cm = gc.lease(store, name)
    lease_cm.__enter__()
    monkeypatch.setattr(gc.os, "open", open_then_reader_finishes)
    assert gc.leased_roots(store) == []
    monkeypatch.undo()
    assert os.listdir(os.path.join(store.path, gc.LEASES)) == []
    store.close()
