"""Pins from the tool reach the server's prune: a real mount syncing to a real server,
`dpmsfs pin` / `unpin`, and the server's online prune keeping what is pinned."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from remote.http_backend import HttpBackend
from tests.fault.conftest import needs_fuse
from tests.mount.conftest import run_cli
from tests.remote.serverproc import ADMIN, NS_A, TOOL_A, ServerProcess, write_tokens
from tests.sync.mounts import SyncMount, sync_config

pytestmark = [needs_fuse]


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    base = workdir.parent
    proc = ServerProcess(
        base / "srv", write_tokens(base / "tokens.json"), ("--prune-min-grace", "2s")
    )
    proc.start()
    yield proc
    proc.stop()


def server_snapshots(server: ServerProcess) -> list[str]:
    with HttpBackend([server.url], NS_A, TOOL_A) as b:
        return sorted(r[len("snapshot.") :] for r in b.list_refs() if r.startswith("snapshot."))


def prune(server: ServerProcess) -> dict[str, object]:
    answer = requests.post(
        f"{server.url}/v2/{NS_A}/prune",
        json={"keep_last": 1, "grace": "2s"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    doc: dict[str, object] = answer.json()
    return doc


def test_a_pin_set_on_the_tool_keeps_the_snapshot_on_the_server_until_unpinned(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A,
                      drill_interval_days=0)  # fmt: skip
    mount = SyncMount(workdir, cfg)
    try:

        def snapshot_and_sync(content: bytes) -> str:
            (workdir / "recipe.txt").write_bytes(content)
            done = mount.cli("sync", "--snapshot", "--wait", "--timeout", "120")
            assert done.returncode == 0, done.stderr + mount.log()[-3000:]
            return str(mount.status()["last_snapshot"])

        first = snapshot_and_sync(b"first\n")
        pinned = run_cli("pin", "--config", str(cfg), str(workdir), first, "--reason", "qual")
        assert pinned.returncode == 0, pinned.stderr
        time.sleep(1.1)  # snapshot names have one-second resolution
        snapshot_and_sync(b"second\n")
        time.sleep(1.1)
        last = snapshot_and_sync(b"third\n")
        time.sleep(2.5)  # beyond the server's 2 s grace
        prune(server)
        assert server_snapshots(server) == sorted({first, last})  # pinned and newest
        unpinned = run_cli("unpin", "--config", str(cfg), str(workdir), first)
        assert unpinned.returncode == 0, unpinned.stderr
        time.sleep(1.1)
        newest = snapshot_and_sync(b"fourth\n")  # the pass sends the new pin set
        time.sleep(2.5)
        doc = prune(server)
        assert first in doc["forgotten"]  # type: ignore[operator]
        assert server_snapshots(server) == [newest]
    finally:
        mount.stop()


def test_a_recheck_after_the_server_pruned_does_not_undo_the_prune(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    """`dpmsfs sync --recheck --wait` after an admin's prune: the tool still has every
    snapshot locally, but sends back none the server forgot, and the wait ends."""
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A,
                      drill_interval_days=0)  # fmt: skip
    mount = SyncMount(workdir, cfg)
    try:
        names = []
        for _ in range(3):
            (workdir / "lot.log").write_bytes(os.urandom(200_000))  # one version each
            done = mount.cli("sync", "--snapshot", "--wait", "--timeout", "120")
            assert done.returncode == 0, done.stderr + mount.log()[-3000:]
            names.append(str(mount.status()["last_snapshot"]))
            time.sleep(1.1)  # snapshot names have one-second resolution
        time.sleep(1.5)  # beyond the server's 2 s grace
        assert set(prune(server)["forgotten"]) == set(names[:2])  # type: ignore[arg-type]
        before = mount.status()["sync"]["uploaded"]["bytes"]
        again = mount.cli("sync", "--recheck", "--wait", "--timeout", "120")
        assert again.returncode == 0, again.stderr + mount.log()[-3000:]
        assert "its prune forgot the other 2" in again.stdout, again.stdout
        assert server_snapshots(server) == [names[2]]
        status = mount.status()["sync"]
        assert status["pruned_on_server"] == 2 and status["queue"]["snapshots"] == 0, status
        # the first two versions of lot.log (only in the forgotten snapshots) not sent again
        assert status["uploaded"]["bytes"] - before < 200_000, status["uploaded"]
        listed = run_cli("snapshots", "--config", str(cfg), str(workdir))
        assert all(n in listed.stdout for n in names), listed.stdout  # all kept locally
    finally:
        mount.stop()
