"""Sync configuration: TOML keys, `--server`/`--token-file`, clear errors for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpmsfs import config
from dpmsfs.errors import UsageError
from dpmsfs.sync.connect import read_token
from tests.mount.conftest import run_cli


def test_toml_keys(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'store = "{tmp_path}/s"\nserver = ["https://a:8765", "http://b:8765/"]\n'
        f'token_file = "{tmp_path}/tok"\ntls_ca = "/etc/ca.pem"\nsync_bandwidth_limit = 1000000\n'
    )
    cfg = config.load(tmp_path / "w", toml)
    assert cfg.server == ("https://a:8765", "http://b:8765/")
    assert cfg.token_file == tmp_path / "tok"
    assert cfg.tls_ca == Path("/etc/ca.pem") and cfg.sync_bandwidth_limit == 1_000_000
    assert config.load(tmp_path / "w", toml, server=config.server_urls("http://c:1,http://d:2")
                       ).server == ("http://c:1", "http://d:2")  # fmt: skip


@pytest.mark.parametrize("bad", ["ftp://x", "a:8765", "https://a:8765/v2/../x", "https://a b"])
def test_bad_server_url_is_one_clear_error(bad: str) -> None:
    with pytest.raises(UsageError, match="is not a URL"):
        config.server_urls(bad)


def test_token_file_checks(tmp_path: Path) -> None:
    cfg = config.Config(workdir=tmp_path, store=tmp_path / "s", server=("http://a:1",))
    with pytest.raises(UsageError, match="needs a token"):
        read_token(cfg)
    missing = config.Config(workdir=tmp_path, store=tmp_path / "s", token_file=tmp_path / "no")
    with pytest.raises(UsageError, match="No such file"):
        read_token(missing)
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(UsageError, match="one token"):
        read_token(config.Config(workdir=tmp_path, store=tmp_path / "s",
                                 token_file=tmp_path / "two"))  # fmt: skip
    (tmp_path / "ok").write_text("  tok-123\n")
    ok = config.Config(workdir=tmp_path, store=tmp_path / "s", token_file=tmp_path / "ok")
    assert read_token(ok) == "tok-123"


def test_mount_without_token_fails_in_the_foreground(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    result = run_cli("mount", "--server", "http://127.0.0.1:9", "--store", str(tmp_path / "s"),
                     str(work))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("give --token-file (or token_file in the config)")
    assert "Traceback" not in result.stderr


def test_sync_without_daemon_is_one_line(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    result = run_cli("sync", "--wait", str(work), "--store", str(tmp_path / "s"))
    assert result.returncode == 4
    assert "daemon is not running" in result.stderr and "Traceback" not in result.stderr


def test_bench_sync_help() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_sync.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--only" in result.stdout and "rpo" in result.stdout


def test_snapshot_cadence_under_continuous_changes(tmp_path: Path) -> None:
    """`sync_snapshot_max_seconds`: 0 means 1.5 x the minimum (45 s by default, under the
    60 s RPO aim); an explicit value below the minimum is a clear error."""
    from dpmsfs.sync.service import SnapshotTrigger

    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(f'store = "{tmp_path}/s"\n')
    cfg = config.load(tmp_path / "w", toml)
    engine: Any = None  # the constructor only stores it
    trigger = SnapshotTrigger(
        engine,
        cfg.sync_snapshot_idle_seconds,
        cfg.sync_snapshot_min_seconds,
        cfg.sync_snapshot_max_seconds,
    )
    assert trigger.max_seconds == 45.0
    toml.write_text(f'store = "{tmp_path}/s"\nsync_snapshot_max_seconds = 50\n')
    explicit = config.load(tmp_path / "w", toml).sync_snapshot_max_seconds
    assert SnapshotTrigger(engine, 5, 30, explicit).max_seconds == 50
    toml.write_text(f'store = "{tmp_path}/s"\nsync_snapshot_max_seconds = 10\n')
    with pytest.raises(UsageError, match="sync_snapshot_max_seconds"):
        config.load(tmp_path / "w", toml)
