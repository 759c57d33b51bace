"""The local budget, end to end: a real mount syncing to a real dpmsfs-server on loopback.

The daemon makes the oldest snapshots the server confirmed server-only once the store
passes a small budget; their files still read byte for byte through `.snapshots` and
`dpmsfs restore` (fetched from the server); nothing the server has not confirmed ever
leaves; a kill -9 in the middle of an eviction leaves a store that verifies.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsfs.store import Store, evicted
from tests.fault.conftest import needs_fuse
from tests.mount.conftest import run_cli, wait_for
from tests.remote.serverproc import NS_A, TOOL_A, ServerProcess, write_tokens
from tests.sync.mounts import SyncMount, sync_config

pytestmark = needs_fuse

MB = 1 << 20
BUDGET = 5 * MB  # three generations of 3 MiB of incompressible data do not fit


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    base = workdir.parent
    proc = ServerProcess(base / "srv", write_tokens(base / "tokens.json"))
    proc.start()
    yield proc
    proc.stop()


def budget_config(path: Path, store: Path, urls: list[str], budget: int) -> Path:
    sync_config(path, store, urls, TOOL_A, NS_A, prune_interval_hours=0)
    with open(path, "a") as f:  # a table after the top-level keys
        f.write("\n[retention]\n")
        f.write(f"local_budget_bytes = {budget}\nlocal_budget_percent = 0\n")
        f.write("local_free_floor_percent = 0\nlocal_budget_check_seconds = 0.5\n")
    return path


def generation(root: Path, tag: str, old: str | None, rng: random.Random) -> dict[str, bytes]:
    """Three files of 1 MiB of new data in ``tag/``; the previous generation deleted, so
    only old snapshots hold it."""
    if old is not None:
        for f in (root / old).iterdir():
            f.unlink()
        (root / old).rmdir()
    (root / tag).mkdir()
    files = {}
    for i in range(3):
        data = rng.randbytes(MB)
        (root / tag / f"f{i}.bin").write_bytes(data)
        files[f"{tag}/f{i}.bin"] = data
    return files


def converge(mount: SyncMount) -> str:
    """Snapshot, wait until the server confirmed it; returns its name."""
    result = mount.cli("sync", "--snapshot", "--wait", "--timeout", "120")
    assert result.returncode == 0, result.stderr + mount.log()[-3000:]
    name = mount.status()["last_snapshot"]
    assert name
    return str(name)


def local_budget(mount: SyncMount) -> dict[str, Any]:
    return dict(mount.status()["prune"]["local_budget"])


def server_only(store_dir: Path) -> set[str]:
    store = Store.open(os.fspath(store_dir), readonly=True)
    try:
        return evicted.evicted_names(store)
    finally:
        store.close()


def test_daemon_evicts_oldest_confirmed_and_reads_fetch_from_server(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    cfg = budget_config(workdir.parent / "b.toml", store_dir, [server.url], BUDGET)
    rng = random.Random(12)
    mount = SyncMount(workdir, cfg)
    generations: list[tuple[str, dict[str, bytes]]] = []
    try:
        mount.wait_for_view()
        old = None
        for tag in ("g1", "g2", "g3"):
            files = generation(workdir, tag, old, rng)
            generations.append((converge(mount), files))
            old = tag
        newest = generations[-1][0]

        def under_budget() -> bool:
            lb = local_budget(mount)
            return lb["used_bytes"] <= BUDGET and lb["server_only_snapshots"] >= 2

        wait_for(under_budget, timeout=60, what=f"store under budget: {local_budget(mount)}")
        gone = server_only(store_dir)
        assert generations[0][0] in gone and generations[1][0] in gone
        assert newest not in gone  # never the newest

        # `.snapshots` reads of evicted versions: byte for byte, from the server
        for name, files in generations:
            for path, data in files.items():
                assert (mount.view / name / path).read_bytes() == data, (name, path)
        # the current files are untouched
        for path, data in generations[-1][1].items():
            assert (workdir / path).read_bytes() == data

        status = mount.cli("status")
        assert "server-only snapshots" in status.stdout, status.stdout
        verify = mount.cli("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "server-only" in verify.stdout

        # `dpmsfs restore` (local) of a server-only snapshot fetches what it lacks
        target = workdir.parent / "restored"
        result = mount.cli("restore", "--snapshot", generations[0][0], "--to", str(target))
        assert result.returncode == 0, result.stdout + result.stderr
        for path, data in generations[0][1].items():
            assert (target / path).read_bytes() == data
        # a drill of a server-only snapshot compares with the recorded chunk ids
        drill = mount.cli("drill", "--snapshot", generations[0][0], "--json")
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert "chunk ids" in drill.stdout, drill.stdout
    finally:
        mount.stop()

    # the local verify after the eviction, offline, is clean (evicted data is no damage)
    result = run_cli("verify", "--config", str(cfg), str(workdir), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    # without the server, a restore of an evicted snapshot says why in one line
    server.stop()
    no_server = workdir.parent / "noserver.toml"
    no_server.write_text(f'store = "{store_dir}"\n')
    result = run_cli("restore", "--config", str(no_server), str(workdir), "--snapshot",
                     generations[0][0], "--to", str(workdir.parent / "r2"))  # fmt: skip
    assert result.returncode != 0
    assert "server-only" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_nothing_unconfirmed_is_evicted(workdir: Path, store_dir: Path) -> None:
    """A server that never answered: over budget, nothing leaves, status says why."""
    cfg = budget_config(workdir.parent / "c.toml", store_dir, ["http://127.0.0.1:9"], MB)
    rng = random.Random(13)
    mount = SyncMount(workdir, cfg)
    try:
        old = None
        for tag in ("g1", "g2"):
            generation(workdir, tag, old, rng)
            result = mount.cli("snapshot")
            assert result.returncode == 0, result.stderr
            old = tag
        before = local_budget(mount)["used_bytes"]
        assert before > MB
        result = mount.cli("prune", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["eviction"]["evicted"] == []
        assert "no server has confirmed" in doc["eviction"]["blocked"]
        time.sleep(1.5)  # the daemon's watch had its chances too
        lb = local_budget(mount)
        assert lb["server_only_snapshots"] == 0
        assert lb["used_bytes"] >= before
        assert "no server has confirmed" in lb["blocked"]
        status = mount.cli("status")
        assert "cannot evict" in status.stdout, status.stdout
    finally:
        mount.stop()
    assert server_only(store_dir) == set()


def test_kill9_during_eviction_then_verify_clean(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    # a budget too big to act while mounted: the evictions below run offline, killed
    cfg = budget_config(workdir.parent / "k.toml", store_dir, [server.url], 1 << 40)
    rng = random.Random(14)
    mount = SyncMount(workdir, cfg)
    generations: list[tuple[str, dict[str, bytes]]] = []
    try:
        old = None
        for tag in ("g1", "g2", "g3", "g4"):
            files = generation(workdir, tag, old, rng)
            generations.append((converge(mount), files))
            old = tag
    finally:
        mount.stop()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # kill at instants spread over what a whole run takes here (start-up, plan, mark,
    # sweep, packs), timed by a dry run that does all but the writes
    started = time.monotonic()
    dry = run_cli("prune", "--config", str(cfg), str(workdir), "--budget", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "server-only" in dry.stdout, dry.stdout
    assert server_only(store_dir) == set()  # a dry run changes nothing
    took = time.monotonic() - started
    for delay in (took * f for f in (0.5, 0.7, 0.85, 1.0, 1.2)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.cli.main", "prune", "--config", str(cfg),
             str(workdir), "--budget", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        result = run_cli("verify", "--config", str(cfg), str(workdir), timeout=300)
        assert result.returncode == 0, (delay, result.stdout, result.stderr)
    result = run_cli("prune", "--config", str(cfg), str(workdir), "--budget", "1", "--json")
    assert result.returncode == 0, result.stderr
    gone = server_only(store_dir)
    assert {name for name, _ in generations[:3]} <= gone
    store = Store.open(os.fspath(store_dir), readonly=True)
    try:  # the newest (a shutdown snapshot may follow the last converge) never leaves
        newest = store.latest_snapshot()
    finally:
        store.close()
    assert newest is not None and newest.name not in gone
    result = run_cli("verify", "--config", str(cfg), str(workdir), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, files in generations:  # every version still restores byte for byte
        target = workdir.parent / f"r-{name}"
        result = run_cli("restore", "--config", str(cfg), str(workdir), "--snapshot", name,
                         "--to", str(target))  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        for path, data in files.items():
            assert (target / path).read_bytes() == data
