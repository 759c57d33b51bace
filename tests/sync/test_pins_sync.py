"""Pins from the tool reach the server's prune: a real mount syncing to a real server,
`dpmsfs pin` / `unpin`, and the server's online prune keeping what is pinned."""

from __future__ import annotations

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
