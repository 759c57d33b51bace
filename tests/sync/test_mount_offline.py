"""A real mount with sync on and the server unreachable: the tool keeps working, snapshots
are taken by the RPO trigger, status says what is going on, `sync --wait` times out."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.fault.conftest import needs_fuse
from tests.mount.conftest import wait_for
from tests.sync.mounts import SyncMount, sync_config
from tests.sync.test_e2e_server import _v2_server_available


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


@needs_fuse
@pytest.mark.skipif(not _v2_server_available(), reason="needs the v2 HttpBackend")
def test_unreachable_server(workdir: Path, store_dir: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    cfg = sync_config(workdir.parent / "tool.toml", store_dir, [url], "tok-" + "x" * 20, "t1")
    mount = SyncMount(workdir, cfg)
    try:
        wait_for(lambda: mount.sync_status()["reachable"] is False, timeout=30,
                 what="sync noticed the server is down")  # fmt: skip
        first = mount.status()["last_snapshot"]
        for i in range(20):  # the equipment writes on, whatever the server does
            (workdir / f"lot{i}.csv").write_bytes(os.urandom(10_000))
        # No `dpmsfs snapshot`: the sync trigger takes one soon after capture idles.
        wait_for(lambda: mount.status()["last_snapshot"] not in ("", first), timeout=30,
                 what="a sync-triggered snapshot")  # fmt: skip
        sync = mount.sync_status()
        assert sync["enabled"] and sync["queue"]["snapshots"] >= 1
        assert sync["lag_seconds"] > 0
        assert sync["server_url"] == url
        assert sync["last_error"]
        start = time.monotonic()
        result = mount.cli("sync", "--wait", "--timeout", "2")
        assert result.returncode == 4, result.stderr
        assert "server unreachable" in result.stderr and "Traceback" not in result.stderr
        assert time.monotonic() - start < 30
        text = mount.cli("status")
        assert "UNREACHABLE" in text.stdout, text.stdout
        for i in range(20):
            assert (workdir / f"lot{i}.csv").stat().st_size == 10_000
    finally:
        mount.stop()
