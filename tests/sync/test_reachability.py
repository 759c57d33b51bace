"""A busy server that answers (503) is reachable; only one that does not answer at all
is not. The sync benchmark raised `server_unreachable` while the server was taking the
first upload."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from dpmsfs.health import AlertSettings, evaluate
from dpmsfs.sync.service import SyncService
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.fakeserver import Reply, fake_server
from tests.unit.store_util import new_store, random_files, snapshot


def busy(method: str, path: str) -> Reply:
    return 503, {"Content-Type": "application/json"}, b'{"error": "busy", "message": "busy"}'


def first_pass_status(tmp_path: Path, url: str) -> tuple[bool | None, str, list[str]]:
    """Run the sync service against `url` until its first pass failed: what it concluded
    about reachability, its error, and the alerts its report raises."""
    store = new_store(str(tmp_path / "store"))
    snapshot(store, random_files(4, 2000, seed=5))
    backend = HttpBackend([url], "t1", "token-that-does-not-matter", retrier=Retrier(NO_RETRY))
    svc = SyncService(store, None, backend)

    async def main() -> dict[str, object]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.run)
            with trio.fail_after(20):
                while not svc.status.last_error:
                    await trio.sleep(0.02)
            report = await trio.to_thread.run_sync(svc.report)
            nursery.cancel_scope.cancel()
        return report

    try:
        report = trio.run(main)
    finally:
        backend.close()
        store.close()
    alerts = evaluate({"sync": report}, AlertSettings(), 0).alerts
    return svc.status.reachable, svc.status.last_error, [a.name for a in alerts]


def test_a_busy_server_is_reachable(tmp_path: Path) -> None:
    with fake_server(busy) as url:
        reachable, error, alerts = first_pass_status(tmp_path, url)
    assert reachable is True
    assert "503" in error
    assert "server_unreachable" not in alerts


def test_a_server_that_does_not_answer_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nobody listens once closed
    reachable, _error, alerts = first_pass_status(tmp_path, url)
    assert reachable is False
    assert "server_unreachable" in alerts
