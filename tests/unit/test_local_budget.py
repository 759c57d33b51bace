"""The local budget's choice and its collection on a real store (no server: the sync
tables are written as the pusher writes them after a server's answer; the end-to-end
test against a real server is tests/sync/test_local_budget.py)."""

from __future__ import annotations

import random
from pathlib import Path

from dpmsfs import budget
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.prune import captured_ids
from dpmsfs.store import Store, evicted, gc, verify
from dpmsfs.sync.state import SyncState, server_key
from tests.unit.store_util import T0, new_store, snapshot

SERVER = "server-uuid-1"


def _data(seed: int, size: int = 200_000) -> bytes:
    return random.Random(seed).randbytes(size)


def _confirm(store: Store, name: str, server: str = SERVER) -> None:
    """What the pusher records once the server holds the snapshot and all its objects."""
    sync = SyncState(store.db)
    sync.set_current_server(server)
    key = server_key(server)
    record = store.get_snapshot(name)
    assert record is not None
    sync.record_batch(key, [], [record.root_tree_id])
    sync.confirm_snapshot(key, name, T0)


def _three(store: Store) -> tuple[str, str, str]:
    shared = _data(0)
    a = snapshot(store, {"a.bin": _data(1), "shared.bin": shared}, T0)
    b = snapshot(store, {"b.bin": _data(2), "shared.bin": shared}, T0 + 10**9)
    c = snapshot(store, {"c.bin": _data(3)}, T0 + 2 * 10**9)
    return a, b, c


def _chunks_present(store: Store, name: str, path: bytes) -> bool:
    reader = SnapshotReader(store)
    entry = reader.lookup(reader.snapshot(name).root_tree_id, path)
    assert entry is not None  # the trees stay local
    return all(store.locate(c) is not None for c in entry.content)


def test_only_confirmed_older_snapshots_leave_and_shared_chunks_stay(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    try:
        a, b, c = _three(store)
        _confirm(store, a)
        _confirm(store, c)  # the newest: confirmed, still never evicted
        result = budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert result.evicted == [a]  # b is not confirmed; c is the newest
        assert "stay local" in result.blocked  # budget 1 byte: cannot be met
        gc.collect(store, captured_ids)
        assert evicted.evicted_names(store) == {a}
        assert not _chunks_present(store, a, b"a.bin")  # only a held it: swept
        assert _chunks_present(store, a, b"shared.bin")  # b (kept) holds it too
        assert _chunks_present(store, b, b"b.bin") and _chunks_present(store, c, b"c.bin")
        report = verify(store, read_data=True)
        assert report.ok and report.server_only_snapshots == 1, report.summary()
        # a real loss in a kept snapshot is still caught
        record_b = store.get_snapshot(b)
        assert record_b is not None
        entry = SnapshotReader(store).lookup(record_b.root_tree_id, b"b.bin")
        assert entry is not None
        chunk = entry.content[0]
        from dpmsfs.store import schema

        store.db.transact(lambda txn: txn.delete(schema.T_OBJECTS, chunk))
        assert not verify(store).ok
    finally:
        store.close()


def test_plan_evicts_the_fewest_oldest(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    try:
        names = [snapshot(store, {f"f{i}.bin": _data(10 + i)}, T0 + i * 10**9) for i in range(5)]
        for name in names:
            _confirm(store, name)
        live = budget.plan(store, 1 << 40)
        assert live.evict == [] and live.candidates == names[:-1]
        # room for about three of the five 200 kB files: the two oldest go
        two_gone = budget.plan(store, live.projected_bytes - 2 * 200_000 + 1_000)
        assert two_gone.evict == names[:2]
        everything = budget.plan(store, 0)
        assert everything.evict == names[:-1] and everything.blocked
    finally:
        store.close()


def test_nothing_without_a_trusted_confirmation(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    try:
        a, _, _ = _three(store)
        result = budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert result.evicted == [] and "no server has confirmed" in result.blocked
        _confirm(store, a, server="other-server")
        SyncState(store.db).set_current_server(SERVER)  # failed over: other's word is no proof
        result = budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert result.evicted == [] and "no older snapshot is confirmed" in result.blocked
        _confirm(store, a)
        SyncState(store.db).set_audit(server_key(SERVER), True)  # being re-checked
        result = budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert result.evicted == [] and "re-checked" in result.blocked
    finally:
        store.close()


def test_a_leased_snapshot_is_not_evicted(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    try:
        a, b, _ = _three(store)
        _confirm(store, a)
        _confirm(store, b)
        with gc.lease(store, a):
            result = budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert result.evicted == [b]
    finally:
        store.close()


def test_forgetting_a_server_only_snapshot_drops_its_mark(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    try:
        a, _, _ = _three(store)
        _confirm(store, a)
        budget.decide(store, evicted.LocalBudget(), T0, False, override_bytes=1)
        assert evicted.evicted_names(store) == {a}
        assert gc.forget_snapshots(store, [a]) == [a]
        assert evicted.evicted_names(store) == set()
    finally:
        store.close()


def test_budget_keys_parse_and_refuse_nonsense() -> None:
    import pytest

    from dpmsfs.errors import UsageError

    table: dict[str, object] = {"keep_last": 3, "local_budget_bytes": 10, "local_budget_percent": 0}
    parsed = evicted.LocalBudget.from_table(table, "x")
    assert table == {"keep_last": 3}  # the policy gets the rest
    assert parsed.cap(1000) == 10 and parsed.free_floor_percent == 15
    assert evicted.LocalBudget().cap(1000) == 700
    with pytest.raises(UsageError):
        evicted.LocalBudget.from_table({"local_budget_percent": 150}, "x")
    with pytest.raises(UsageError):
        evicted.LocalBudget.from_table({"local_budget_bytes": "lots"}, "x")
    assert evicted.parse_size("40G") == 40 << 30 and evicted.parse_size("500M") == 500 << 20
    with pytest.raises(UsageError):
        evicted.parse_size("big")


def test_a_dry_run_evicts_what_the_real_run_will(tmp_path: Path) -> None:
    """Policy removals and a budget together: the dry run plans the eviction as if the
    policy's snapshots were already forgotten, as the real run does (forget, then plan)."""
    from dpmsfs.prune import prune
    from dpmsfs.store.retention import Policy

    for cap_files in (1.5, 2.5, 4.5):  # room for one, two, four of the 200 kB files
        store = new_store(str(tmp_path / f"s{cap_files}"))
        try:
            names = [snapshot(store, {"f.bin": _data(20 + i)}, T0 + i * 10**9) for i in range(6)]
            for name in names:
                _confirm(store, name)
            cap = evicted.LocalBudget(bytes=int(cap_files * 200_000 / 0.9), percent=0,
                                      free_floor_percent=0)  # fmt: skip
            policy = Policy(keep_last=4)  # forgets the two oldest
            dry = prune(store, policy, dry_run=True, now_ns=T0 + 10 * 10**9, budget=cap)
            assert dry.forgotten == names[:2]
            assert dry.eviction is not None
            assert not set(dry.eviction.evicted) & set(names[:2]), dry.eviction
            real = prune(store, policy, dry_run=False, now_ns=T0 + 10 * 10**9, budget=cap)
            assert real.eviction is not None
            assert dry.eviction.evicted == real.eviction.evicted, (cap_files, dry, real)
        finally:
            store.close()
