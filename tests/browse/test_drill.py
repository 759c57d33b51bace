"""`dpmsfs drill` through real parts: a real mount takes two snapshots, a real
dpmsfs-server process holds them, the CLI runs as a child process; the result shows in
`dpmsfs status` and on the server's report (the fleet page's source)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browse.test_server_cli import publish
from tests.mount.conftest import CliMount, cli_snapshot, fuse_usable, run_cli
from tests.remote.serverproc import ADMIN, NS_A, TOOL_A, ServerProcess, write_tokens
from tests.remote.test_fleet import bearer, call

pytestmark = pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "srv", write_tokens(tmp_path / "tokens.json")).start()
    yield proc
    proc.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tool.token"
    path.write_text(TOOL_A + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def two_snapshots(workdir: Path, store_dir: Path, server: ServerProcess) -> tuple[str, str]:
    """An older and a newer snapshot, both on the server; the mount is stopped after."""
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        (workdir / "pgm").mkdir()
        for i in range(12):
            (workdir / "pgm" / f"f{i:02d}.bin").write_bytes(os.urandom(1000 + i * 50_000))
        (workdir / "notes.txt").write_text("older\n")
        older = cli_snapshot(workdir, store_dir)
        time.sleep(1.1)  # snapshot names have a one-second resolution
        (workdir / "notes.txt").write_text("newer\n")
        newer = cli_snapshot(workdir, store_dir)
        publish(store_dir, server, older)
        publish(store_dir, server, newer)
    finally:
        mount.stop()
    return older, newer


def drill(
    workdir: Path, store_dir: Path, server: ServerProcess, token_file: Path, *args: str
) -> tuple[int, dict[str, object], str]:
    result = run_cli("drill", str(workdir), "--store", str(store_dir), "--server", server.url,
                     "--tool", NS_A, "--token-file", str(token_file), "--json", "--retry-seconds",
                     "2", *args)  # fmt: skip
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, doc, result.stderr


def test_drill_restores_a_sample_of_an_older_snapshot_and_reports_it(
    workdir: Path,
    store_dir: Path,
    server: ServerProcess,
    token_file: Path,
    two_snapshots: tuple[str, str],
) -> None:
    older, _ = two_snapshots
    code, doc, err = drill(workdir, store_dir, server, token_file, "--files", "5", "--seed", "7")
    assert code == 0, err
    assert doc["ok"] is True and doc["snapshot"] == older  # never the newest
    assert doc["files"] == 5 and doc["mismatches"] == []
    assert doc["compared_with"] == "chunk ids and local store"
    assert 0 < float(doc["first_file_seconds"]) <= float(doc["seconds"])  # type: ignore[arg-type]
    assert doc["report_error"] == ""
    # recorded beside the store, shown by status (daemon down)
    recorded = json.loads((store_dir / "last-drill.json").read_text())
    assert recorded["ok"] and recorded["files"] == 5
    status = run_cli("status", str(workdir), "--store", str(store_dir), "--json")
    assert json.loads(status.stdout)["drill"]["snapshot"] == older, status.stderr
    text = run_cli("status", str(workdir), "--store", str(store_dir)).stdout
    assert "drill" in text and "passed, 5 files" in text
    # reported to the server: what the fleet page shows
    code2, _, body = call(server.url, "GET", f"/v2/{NS_A}/report", headers=bearer(ADMIN))
    assert code2 == 200
    assert json.loads(body)["report"]["drill"]["ok"] is True
    status_page, _, page = call(server.url, "GET", "/fleet", headers=bearer(ADMIN))
    assert status_page == 200 and b"passed" in page


def test_drill_fails_loudly_when_the_server_copy_is_damaged(
    workdir: Path,
    store_dir: Path,
    server: ServerProcess,
    token_file: Path,
    two_snapshots: tuple[str, str],
) -> None:
    older, _ = two_snapshots
    blobs = [p for p in (server.data / "pool").rglob("*") if p.is_file()]
    large = [p for p in blobs if p.stat().st_size > 20_000]  # file chunks, not trees
    assert large
    for path in large:
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    code, doc, err = drill(workdir, store_dir, server, token_file, "--files", "12")
    assert code == 1, err
    assert doc["ok"] is False and doc["snapshot"] == older
    assert "failed" in str(doc["message"]) and doc["mismatches"]
    assert json.loads((store_dir / "last-drill.json").read_text())["ok"] is False
    _, _, body = call(server.url, "GET", f"/v2/{NS_A}/report", headers=bearer(ADMIN))
    assert json.loads(body)["report"]["drill"]["ok"] is False


def test_drill_without_a_server_is_one_clear_line(workdir: Path, store_dir: Path) -> None:
    result = run_cli("drill", str(workdir), "--store", str(store_dir))
    assert result.returncode == 2
    assert "no server configured" in result.stderr and "Traceback" not in result.stderr


def test_daemon_schedule_drills_monthly_and_only_with_a_server(
    workdir: Path,
    store_dir: Path,
    server: ServerProcess,
    token_file: Path,
    two_snapshots: tuple[str, str],
) -> None:
    from dpmsfs.clock import SYSTEM_CLOCK
    from dpmsfs.config import Config
    from dpmsfs.drill_service import FIRST_DRILL_DELAY_S, DrillService
    from dpmsfs.store.store import Store

    older, _ = two_snapshots
    cfg = Config(workdir=workdir, store=store_dir, tool_id=NS_A, server=(server.url,),
                 token_file=token_file)  # fmt: skip
    assert cfg.drill_interval_days == 30
    store = Store.open(str(store_dir), readonly=True)
    try:
        assert not DrillService(
            Config(workdir=workdir, store=store_dir), store, SYSTEM_CLOCK
        ).enabled
        service = DrillService(cfg, store, SYSTEM_CLOCK)
        assert service.enabled and service.seconds_until_due() == FIRST_DRILL_DELAY_S
        result = service.run_once({"health": {"alerts": [
            {"name": "store_free", "severity": "warning", "message": "15 % free"}]},
            "sync": {"lag_seconds": 42}})  # fmt: skip
        assert result.ok and result.snapshot == older
        assert 29.9 * 86400 < service.seconds_until_due() <= 30 * 86400
    finally:
        store.close()
    _, _, body = call(server.url, "GET", f"/v2/{NS_A}/report", headers=bearer(ADMIN))
    sent = json.loads(body)["report"]
    assert sent["sync_lag_seconds"] == 42 and sent["alerts"][0]["name"] == "store_free"
    assert sent["drill"]["ok"] is True
