"""Every tool reports to the fleet page by itself: a real mount syncing to a real server
posts its report after a successful sync pass, with no drill ever run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fault.conftest import needs_fuse
from tests.mount.conftest import wait_for
from tests.remote.serverproc import ADMIN, NS_A, TOOL_A, ServerProcess, write_tokens
from tests.sync.mounts import SyncMount, sync_config

pytestmark = [needs_fuse]


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    base = workdir.parent
    proc = ServerProcess(base / "srv", write_tokens(base / "tokens.json"))
    proc.start()
    yield proc
    proc.stop()


def report(server: ServerProcess) -> dict[str, Any] | None:
    answer = requests.get(
        f"{server.url}/v2/{NS_A}/report", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    return answer.json() if answer.status_code == 200 else None


def test_a_syncing_mount_reports_to_the_fleet_page_without_a_drill(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A,
                      drill_interval_days=0)  # fmt: skip
    started_ns = time.time_ns()
    mount = SyncMount(workdir, cfg)
    try:
        (workdir / "recipe.txt").write_bytes(b"lot 42\n" * 100)
        done = mount.cli("sync", "--snapshot", "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stderr + mount.log()[-3000:]
        last = mount.status()["last_snapshot"]
        wait_for(lambda: report(server) is not None, timeout=60, what="a report from the tool")
        stored = report(server)
        assert stored is not None and isinstance(stored["report"], dict)
        doc = stored["report"]
        assert int(doc["time_utc_ns"]) >= started_ns
        assert doc["drill"] is None  # no drill ran: this came from the sync service
        assert doc["sync_lag_seconds"] is not None
        page = requests.get(
            f"{server.url}/fleet", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        assert page.status_code == 200
        assert NS_A in page.text and str(last) in page.text
        assert "no report" not in page.text.lower()
    finally:
        mount.stop()
