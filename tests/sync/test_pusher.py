"""The push pass against an in-memory /v2 server: incremental, ordered, crash-safe."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsfs.store.store import Store
from dpmsfs.sync.pusher import PassReport, Pusher, Stopped
from dpmsfs.sync.state import SyncState, server_key
from remote.backend import Backend
from remote.errors import NotFoundError, TemporaryRemoteError
from remote.faulty_backend import FaultyBackend
from remote.memory_backend import MemoryBackend, MemoryServer
from tests.sync.util import assert_refs_complete, read_snapshot, snapshots_on
from tests.unit.store_util import T0, new_store, random_files, snapshot


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = new_store(str(tmp_path / "store"))
    yield s
    s.close()


def client(server: MemoryServer, ns: str) -> MemoryBackend:
    return MemoryBackend(server=server, namespace=ns)


def watched(server: MemoryServer, ns: str, on_call: Callable[[str], None]) -> FaultyBackend:
    """A client whose every call first runs `on_call(method)` (which may raise)."""

    def fail_on(method: str, n: int) -> BaseException | None:
        try:
            on_call(method)
        except Exception as exc:
            return exc
        return None

    return FaultyBackend(client(server, ns), fail_on)


def pusher(store: Store, backend: Backend, **kw: Any) -> Pusher:
    return Pusher(store, SyncState(store.db), backend, **kw)


def test_first_sync_then_only_new_objects(store: Store) -> None:
    files = random_files(30, 20_000, seed=1)
    first = snapshot(store, files)
    server = MemoryServer()
    backend = client(server, "tool-a")
    report = pusher(store, backend).run_pass()
    assert report.snapshots_done == 1 and not report.blocked
    assert read_snapshot(backend, first) == files
    sent_first = server.counters.frame_bytes

    changed = dict(files)
    changed["d1/f1.bin"] = os.urandom(5000)
    changed["new.txt"] = b"hello"
    second = snapshot(store, changed, T0 + 60 * 10**9)
    report = pusher(store, backend).run_pass()
    assert report.snapshots_done == 1
    # Only the two new chunks, the changed directory tree and the root went out, and the
    # unchanged subtrees d0, d2 were not even asked about.
    assert report.objects_uploaded == 4, report
    assert report.objects_checked == 4
    assert server.counters.frame_bytes - sent_first < sent_first / 10
    assert read_snapshot(backend, second) == changed
    assert pusher(store, backend).run_pass().objects_checked == 0


def test_second_tool_sends_no_shared_bytes(tmp_path: Path) -> None:
    files = random_files(20, 30_000, seed=2)
    server = MemoryServer()
    a = new_store(str(tmp_path / "a"))
    b = new_store(str(tmp_path / "b"))
    try:
        snapshot(a, files)
        name_b = snapshot(b, files | {"only-b": b"b" * 1000})
        pusher(a, client(server, "tool-a")).run_pass()
        stored = server.counters.blobs_stored
        report = pusher(b, client(server, "tool-b")).run_pass()
        # b's own file, its root tree: nothing else is uploaded (claimed by digest).
        assert report.objects_uploaded == 2
        assert server.counters.blobs_stored - stored == 2
        assert read_snapshot(client(server, "tool-b"), name_b)["only-b"] == b"b" * 1000
    finally:
        a.close()
        b.close()


def test_no_ref_before_its_objects_whatever_call_fails(store: Store) -> None:
    """Fail the N-th backend call for every N; at every moment the server's refs are
    complete, and a later pass converges."""
    snaps = [snapshot(store, random_files(12, 9000, seed=s), T0 + s * 10**9) for s in range(3)]
    n = 1
    while True:
        server = MemoryServer()
        calls = 0

        def on_call(method: str, server: MemoryServer = server, fail_at: int = n) -> None:
            nonlocal calls
            calls += 1
            assert_refs_complete(client(server, "t"))
            if calls == fail_at:
                raise TemporaryRemoteError(f"injected at call {fail_at} ({method})")

        backend = watched(server, "t", on_call)
        p = pusher(store, backend, batch_objects=7)
        SyncState(store.db).forget_server(bytes(8))  # nothing: fresh server id anyway
        try:
            p.run_pass()
            finished = True
        except TemporaryRemoteError:
            finished = False
        assert_refs_complete(client(server, "t"))
        pusher(store, client(server, "t"), batch_objects=7).run_pass()
        assert sorted(snapshots_on(client(server, "t"))) == sorted(snaps)
        assert assert_refs_complete(client(server, "t")) == 3
        if finished:
            break
        n += 1
    assert n > 10  # the loop really went through many failure points


def test_damaged_copy_on_server_is_uploaded_again_on_recheck(store: Store) -> None:
    files = random_files(5, 10_000, seed=3)
    name = snapshot(store, files)
    server = MemoryServer()
    backend = client(server, "t")
    pusher(store, backend).run_pass()
    victim = next(iter(server.namespace("t").objects))
    digest = server.digest_of("t", victim)
    assert digest is not None
    server.corrupt(digest)
    p = pusher(store, backend)
    assert p.run_pass().objects_checked == 0  # confirmed: not asked again by itself
    p.recheck()
    report = p.run_pass()
    assert report.objects_uploaded == 1
    assert read_snapshot(backend, name) == files


def test_failover_rechecks_the_new_server(store: Store) -> None:
    first = snapshot(store, random_files(6, 8000, seed=4))
    primary, peer = MemoryServer(), MemoryServer()
    pusher(store, client(primary, "t")).run_pass()
    second = snapshot(store, random_files(6, 8000, seed=5), T0 + 10**9)
    # The peer has the first snapshot (replicated), not the second.
    peer.pool = dict(primary.pool)
    peer.namespaces = copy.deepcopy(primary.namespaces)
    report = pusher(store, client(peer, "t")).run_pass()
    assert report.snapshots_done == 1  # the first is known complete from the peer's refs
    assert sorted(snapshots_on(client(peer, "t"))) == [first, second]
    assert_refs_complete(client(peer, "t"))
    # Back on the primary: only the second snapshot is new there.
    report = pusher(store, client(primary, "t")).run_pass()
    assert report.snapshots_done == 1
    assert_refs_complete(client(primary, "t"))


def test_snapshot_removed_locally_leaves_the_queue(store: Store) -> None:
    name = snapshot(store, {"a": b"x" * 100})
    p = pusher(store, client(MemoryServer(), "t"))
    assert [r.name for r in p.queue()] == [name]

    def drop(txn: object) -> None:
        txn.delete("snapshots", name.encode())  # type: ignore[attr-defined]

    store.db.transact(drop)
    assert p.run_pass().snapshots_done == 0
    assert p.queue() == []


def test_stop_between_requests(store: Store) -> None:
    snapshot(store, random_files(10, 5000, seed=6))
    stop = threading.Event()
    server = MemoryServer()

    def on_call(method: str) -> None:
        stop.set()

    p = pusher(store, watched(server, "t", on_call), stop=stop, batch_objects=3)
    with pytest.raises(Stopped):
        p.run_pass(PassReport())
    assert snapshots_on(client(server, "t")) == []


def test_interrupted_pass_redoes_at_most_one_batch(tmp_path: Path) -> None:
    """A pass cut off after a few uploads (a crash: the process and its memory are gone),
    then a new process on the same store: it resends at most the batch in flight."""
    path = str(tmp_path / "store")
    store = new_store(path)
    files = random_files(40, 50_000, seed=9)
    name = snapshot(store, files)
    server = MemoryServer()
    uploads = 0

    def crash_on_third_upload(method: str) -> None:
        nonlocal uploads
        if method == "upload":
            uploads += 1
            if uploads == 3:
                raise TemporaryRemoteError("connection reset")

    p = pusher(store, watched(server, "t", crash_on_third_upload), batch_objects=8)
    with pytest.raises(TemporaryRemoteError):
        p.run_pass()
    stored_before = len(server.pool)
    store.close()
    store = Store.open(path)
    try:
        SyncState(store.db)  # declares the tables
        with store.db.read() as txn:
            confirmed = txn.count("sync_objects")
        assert confirmed == stored_before >= 14  # two batches, durable
        report = pusher(store, client(server, "t"), batch_objects=8).run_pass()
        assert report.snapshots_done == 1
        # 41 chunks + 4 trees; what was confirmed before the crash is not sent again
        assert report.objects_uploaded == 45 - confirmed
        assert read_snapshot(client(server, "t"), name) == files
    finally:
        store.close()


def test_throttle_limits_the_rate() -> None:
    from dpmsfs.sync.throttle import Throttle

    clock = [0.0]
    waits: list[float] = []

    class FakeStop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            clock[0] += timeout or 0.0
            return False

    throttle = Throttle(1_000_000, monotonic=lambda: clock[0], stop=FakeStop())
    assert throttle.request_size(32 << 20) == 1_000_000
    for _ in range(10):
        throttle.consume(500_000)
    # 5 MB at 1 MB/s with a 1 s bucket: about 4 s of waiting
    assert 3.5 <= sum(waits) <= 4.5
    assert Throttle(0).request_size(123) == 123


def test_a_snapshot_the_server_pruned_is_not_sent_again(store: Store) -> None:
    """An admin's prune on the server stands: a recheck (or a failover) sends neither the
    forgotten snapshot's ref nor its objects, and it is not left in the queue."""
    files = [random_files(4, 9000, seed=40 + i) for i in range(3)]
    names = [snapshot(store, f, T0 + i * 10**9) for i, f in enumerate(files)]
    server = MemoryServer()
    backend = client(server, "t")
    p = pusher(store, backend)
    assert p.run_pass().snapshots_done == 3
    server.forget_refs("t", ["snapshot." + names[0]])
    server.namespace("t").objects.clear()  # worst case: every mapping and blob swept
    server.pool.clear()
    sent = server.counters.frame_bytes
    p.recheck()
    report = p.run_pass()
    assert report.snapshots_done == 2, report
    assert sorted(snapshots_on(backend)) == sorted(names[1:])
    assert p.queue() == []
    # Only the kept snapshots' objects went out again (their unique files and trees).
    resent = server.counters.frame_bytes - sent
    assert resent < sum(map(len, files[1].values())) + sum(map(len, files[2].values())) + 4096
    assert read_snapshot(backend, names[1]) == files[1]
    assert SyncState(store.db).forgotten_snapshots(server_key(server.id)) == {names[0]}


def test_a_server_without_the_forgotten_query_refuses_the_ref_and_the_pass_accepts_it(
    store: Store,
) -> None:
    """The 410 to the ref's PUT (pruned between the question and the PUT, or an older
    server that does not answer `refs:forgotten`) settles the snapshot as well."""
    name = snapshot(store, random_files(3, 5000, seed=50))
    server = MemoryServer()
    server.forget_refs("t", ["snapshot." + name])

    def old_server(method: str) -> None:
        if method == "forgotten_refs":
            raise NotFoundError("unknown path")

    p = pusher(store, watched(server, "t", old_server))
    report = p.run_pass()
    assert report.snapshots_done == 0 and not report.blocked
    assert snapshots_on(client(server, "t")) == []
    assert p.queue() == []
    assert p.run_pass().objects_checked == 0  # settled: nothing walked again
