"""verify: damage is found and tied to the snapshots and paths it affects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dpmsfs.store import Store, verify
from dpmsfs.store.packs import RECORD, pack_path
from tests.unit.store_util import T0, new_store, random_files, snapshot


def _store_with_snapshots(path: Path) -> tuple[Store, dict[str, bytes], list[str]]:
    store = new_store(str(path), pack_size=256 << 10)
    files = random_files(12, 40_000, seed=3)
    names = [snapshot(store, files, T0), snapshot(store, files, T0 + 3600 * 10**9)]
    return store, files, names


def _first_chunk(store: Store, snapshot_name: str, path: str) -> bytes:
    record = store.get_snapshot(snapshot_name)
    assert record is not None
    tree_id = record.root_tree_id
    *dirs, leaf = path.split("/")
    for d in dirs:
        tree_id = {e.name: e for e in store.read_tree(tree_id)}[d.encode()].content[0]
    return {e.name: e for e in store.read_tree(tree_id)}[leaf.encode()].content[0]


def test_clean_store_verifies(tmp_path: Path) -> None:
    store, _, _ = _store_with_snapshots(tmp_path / "s")
    report = verify(store, read_data=True)
    assert report.ok, report
    assert report.snapshots_checked == 2 and report.objects_checked == store.stats().objects
    store.close()


def test_flipped_byte_is_reported_with_snapshots_and_paths(tmp_path: Path) -> None:
    store, _, names = _store_with_snapshots(tmp_path / "s")
    oid = _first_chunk(store, names[0], "d1/f4.bin")
    loc = store.locate(oid)
    assert loc is not None
    with open(pack_path(store.packs_dir, loc.pack_id), "r+b") as f:
        pos = loc.offset + RECORD.size + loc.stored_length // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x55]))
    assert verify(store).ok  # structure is intact: only reading the data finds it
    report = verify(store, read_data=True)
    assert not report.ok
    assert set(report.damaged) == {oid}
    damaged = report.damaged[oid]
    assert damaged.pack_id == loc.pack_id
    assert damaged.snapshots == set(names)
    assert sorted(damaged.paths) == sorted(f"{n}/d1/f4.bin" for n in names)
    store.close()


def test_truncated_pack(tmp_path: Path) -> None:
    store, _, names = _store_with_snapshots(tmp_path / "s")
    oid = _first_chunk(store, names[0], "d2/f5.bin")
    loc = store.locate(oid)
    assert loc is not None
    path = pack_path(store.packs_dir, loc.pack_id)
    os.truncate(path, loc.offset + RECORD.size + 10)
    report = verify(store)
    assert not report.ok
    assert any(path in p for p in report.problems)
    assert oid in report.damaged
    # The file is reported at the deepest path verify can reach: its own path, or that
    # of a tree which sat in the lost tail of the pack too (trees are written last).
    paths = [p for d in report.damaged.values() for p in d.paths]
    assert any(f"{names[1]}/d2/f5.bin".startswith(p) for p in paths), paths
    store.close()


def test_missing_pack_and_missing_tree(tmp_path: Path) -> None:
    store, _, names = _store_with_snapshots(tmp_path / "s")
    record = store.get_snapshot(names[0])
    assert record is not None
    loc = store.locate(record.root_tree_id)
    assert loc is not None
    os.unlink(pack_path(store.packs_dir, loc.pack_id))
    report = verify(store)
    assert not report.ok
    assert record.root_tree_id in report.damaged
    assert report.damaged[record.root_tree_id].snapshots == set(names)
    store.close()


def test_unindexed_pack_is_garbage_not_damage(tmp_path: Path) -> None:
    store, _, _ = _store_with_snapshots(tmp_path / "s")
    some_pack = next(Path(store.packs_dir).rglob("*.pack"))
    stray = Path(pack_path(store.packs_dir, bytes(16)))
    stray.parent.mkdir(exist_ok=True)
    shutil.copy(some_pack, stray)
    report = verify(store, read_data=True)
    assert report.ok
    assert report.garbage == [str(stray)]
    store.close()
