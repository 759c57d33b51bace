"""The sync service's loop on trio: backoff while the server is down, woken by a new
snapshot without waiting for the backoff, converging by itself, stopping cleanly."""

from __future__ import annotations

from pathlib import Path

import trio

from dpmsfs.sync import service as service_module
from dpmsfs.sync.service import SyncService
from remote.faulty_backend import FaultyBackend
from remote.memory_backend import MemoryBackend, MemoryServer
from tests.sync.test_pusher import watched
from tests.sync.util import assert_refs_complete, snapshots_on
from tests.unit.store_util import T0, new_store, random_files, snapshot


def test_backoff_then_converges_and_new_snapshot_wakes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service_module, "FIRST_BACKOFF", 30.0)  # far longer than the test
    store = new_store(str(tmp_path / "store"))
    server = MemoryServer()
    up = [False]
    backend = FaultyBackend(MemoryBackend(server=server, namespace="t"), lambda m, n: not up[0])
    first = snapshot(store, random_files(8, 4000, seed=1))
    svc = SyncService(store, None, backend)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run)
            with trio.fail_after(10):
                while svc.status.reachable is not False:
                    await trio.sleep(0.02)
            report = await trio.to_thread.run_sync(svc.report)
            assert report["reachable"] is False and report["queue"]["snapshots"] == 1
            assert report["lag_seconds"] > 0
            assert svc.status.next_attempt_in >= 15.0  # backing off
            up[0] = True
            second = await trio.to_thread.run_sync(
                lambda: snapshot(store, random_files(8, 4000, seed=2), T0 + 10**9)
            )
            svc.wake()  # as the engine's snapshot listener does
            with trio.fail_after(10):  # well before the 15-30 s backoff ends
                while sorted(snapshots_on(backend)) != sorted([first, second]):
                    await trio.sleep(0.02)
            with trio.fail_after(10):
                while not svc.status.last_success_ns:
                    await trio.sleep(0.02)
            report = await trio.to_thread.run_sync(svc.report)
            assert report["reachable"] is True and report["queue"]["snapshots"] == 0
            assert report["lag_seconds"] == 0.0 and report["server_id"] == server.id
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
        assert assert_refs_complete(backend) == 2
    finally:
        store.close()


def test_unmount_mid_pass_stops_the_thread(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "store"))
    server = MemoryServer()
    calls = 0

    def slow(method: str) -> None:
        nonlocal calls
        calls += 1
        import time

        time.sleep(0.05)

    backend = watched(server, "t", slow)
    snapshot(store, random_files(60, 3000, seed=3))
    svc = SyncService(store, None, backend)
    svc.pusher.batch_objects = 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run)
            with trio.fail_after(10):
                while calls < 3:
                    await trio.sleep(0.01)
            # mid-pass (a long first sync): the server answered, so it is reachable
            # (not "not contacted yet", which the old code said until the pass ended)
            assert svc.status.running and svc.status.reachable is True
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not svc.status.running  # the pass thread ended before run() returned
    assert snapshots_on(backend) == []
    store.close()
