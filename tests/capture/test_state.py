"""The capture state and journal, without a mount: tables, renames, incremental trees."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunker import DEFAULT_PARAMS
from dpmsfs.capture import state
from dpmsfs.capture.journal import ChangeJournal
from dpmsfs.capture.snapshotter import take_snapshot
from dpmsfs.capture.state import FileState, Pending
from dpmsfs.clock import FakeClock
from dpmsfs.fs.changes import ChangeKind
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType, TreeEntry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.create(str(tmp_path / "store"), DEFAULT_PARAMS.identity) as created:
        created.db.declare(*state.ALL_TABLES)
        yield created


def file_state(name: bytes, data: bytes, store: Store) -> FileState:
    ids = (store.write_chunk(data)[0],) if data else ()
    entry = TreeEntry(name, EntryType.FILE, 0o644, 0, 0, len(data), 1, content=ids)
    return FileState(entry, 1, 100, 1)


def dir_state(name: bytes) -> FileState:
    entry = TreeEntry(name, EntryType.DIR, 0o755, 0, 0, 0, 1, content=(bytes(16),))
    return FileState(entry, 1, 200, 1)


def put(store: Store, path: bytes, value: FileState) -> None:
    store.flush()

    def body(txn: state.WriteTxn) -> None:
        parent, name = state.split(path)
        state.put_state(txn, state.entry_key(state.ensure_dir(txn, parent), name), value)

    store.db.transact(body)


def get(store: Store, path: bytes) -> FileState | None:
    with store.db.read() as txn:
        parent, name = state.split(path)
        dir_id = state.lookup_dir(txn, parent)
        return None if dir_id is None else state.get_state(txn, state.entry_key(dir_id, name))


def make_tree(store: Store) -> None:
    put(store, b"pgm", dir_state(b"pgm"))
    put(store, b"pgm/a", dir_state(b"a"))
    put(store, b"pgm/a/x.cpp", file_state(b"x.cpp", b"x" * 10, store))
    put(store, b"pgm/a/y.cpp", file_state(b"y.cpp", b"y" * 20, store))
    put(store, b"top.txt", file_state(b"top.txt", b"t", store))
    put(store, b"pgm/b", dir_state(b"b"))


def test_totals_follow_puts_and_deletes(store: Store) -> None:
    make_tree(store)
    with store.db.read() as txn:
        assert state.totals(txn) == (3, 31)

    def remove(txn: state.WriteTxn) -> None:
        state.delete_entry(txn, state.entry_key(state.ROOT_ID, b"pgm"))

    store.db.transact(remove)
    with store.db.read() as txn:
        assert state.totals(txn) == (1, 1)
        assert state.lookup_dir(txn, b"pgm/a") is None
    assert get(store, b"pgm/a/x.cpp") is None


def test_directory_rename_moves_one_entry_and_keeps_the_subtree(store: Store) -> None:
    make_tree(store)
    journal = ChangeJournal(store.db, FakeClock())
    journal.record(ChangeKind.WRITE, b"pgm/a/x.cpp")  # pending inside the moved tree
    journal.record(ChangeKind.RENAME, b"prog", b"pgm")
    journal.flush()
    assert get(store, b"pgm/a/x.cpp") is None
    moved = get(store, b"prog/a/x.cpp")
    assert moved is not None and moved.entry.size == 10
    prog = get(store, b"prog")
    assert prog is not None and prog.entry.name == b"prog"
    with store.db.read() as txn:
        pending = {state.key_path(txn, key): e.flags for key, e in state.iter_pending(txn)}
    assert pending[b"prog/a/x.cpp"] & Pending.CONTENT  # followed the rename
    assert pending[b"prog"] & Pending.MOVED


def test_exchange_swaps_entries_and_subtrees(store: Store) -> None:
    make_tree(store)
    put(store, b"other", dir_state(b"other"))
    put(store, b"other/z", file_state(b"z", b"zz", store))
    journal = ChangeJournal(store.db, FakeClock())
    journal.record(ChangeKind.EXCHANGE, b"other", b"pgm")
    journal.flush()
    assert get(store, b"other/a/x.cpp") is not None
    assert get(store, b"pgm/z") is not None
    assert get(store, b"pgm/a") is None
    with store.db.read() as txn:
        assert state.dir_path(txn, state.lookup_dir(txn, b"other/a") or 0) == b"other/a"


def test_rename_over_existing_forgets_the_replaced_subtree(store: Store) -> None:
    make_tree(store)
    put(store, b"old", dir_state(b"old"))
    journal = ChangeJournal(store.db, FakeClock())
    journal.record(ChangeKind.RENAME, b"old", b"pgm/a")
    journal.flush()
    assert get(store, b"old/x.cpp") is not None
    assert get(store, b"pgm/a") is None
    with store.db.read() as txn:
        assert state.totals(txn) == (3, 31)


def test_journal_merges_flags_and_reopens_after_close(store: Store) -> None:
    clock = FakeClock()
    journal = ChangeJournal(store.db, clock)
    journal.record(ChangeKind.CREATE, b"f")
    journal.record(ChangeKind.CLOSE_WRITE, b"f")
    journal.flush()
    with store.db.read() as txn:
        [(_, first)] = list(state.iter_pending(txn))
    assert first.flags & Pending.CLOSED
    clock.advance(3)
    journal.record(ChangeKind.WRITE, b"f")  # written again: no longer closed
    journal.flush()
    with store.db.read() as txn:
        [(_, second)] = list(state.iter_pending(txn))
    assert not second.flags & Pending.CLOSED
    assert second.seq > first.seq
    assert second.first_ns == first.first_ns and second.last_ns == first.first_ns + 3 * 10**9


def test_snapshots_rebuild_only_dirty_directories(store: Store) -> None:
    make_tree(store)
    lock = threading.Lock()
    clock = FakeClock()
    first = take_snapshot(store.db, store, clock, lock)
    trees_before = store.stats().objects
    clock.advance(1)
    unchanged = take_snapshot(store.db, store, clock, lock)
    assert unchanged.root_tree_id == first.root_tree_id
    assert store.stats().objects == trees_before  # nothing encoded again
    put(store, b"pgm/a/x.cpp", file_state(b"x.cpp", b"new content", store))
    with store.db.read() as txn:
        assert state.dirty_dirs(txn) == [state.lookup_dir(txn, b"pgm/a")]
    clock.advance(1)
    second = take_snapshot(store.db, store, clock, lock)
    old_root = {e.name: e for e in store.read_tree(first.root_tree_id)}
    new_root = {e.name: e for e in store.read_tree(second.root_tree_id)}
    assert new_root[b"top.txt"] == old_root[b"top.txt"]
    assert new_root[b"pgm"].content != old_root[b"pgm"].content
    old_pgm = {e.name: e for e in store.read_tree(old_root[b"pgm"].content[0])}
    new_pgm = {e.name: e for e in store.read_tree(new_root[b"pgm"].content[0])}
    assert new_pgm[b"b"].content == old_pgm[b"b"].content  # untouched subtree shared
    assert new_pgm[b"a"].content != old_pgm[b"a"].content
    with store.db.read() as txn:
        assert state.dirty_dirs(txn) == []
