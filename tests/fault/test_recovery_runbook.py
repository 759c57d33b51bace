"""The recovery scenarios of docs/operations.md ("Recovery, step by step"), run with the
commands the document gives an operator, in its order, against a real mount and a real
`dpmsfs-server` on loopback.

Each test names its scenario; the document points back here. Scenarios with their own
fault tests elsewhere (network outage, server failure and fail-back, a chunk corrupted on
the server) are listed in the document with those tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.conftest import needs_fuse
from tests.mount.conftest import force_unmount, run_cli
from tests.remote.serverproc import NS_A, TOOL_A, ServerProcess, write_tokens
from tests.sync.mounts import SyncMount, sync_config

pytestmark = needs_fuse


def tree_digest(root: Path) -> dict[str, str]:
    """Every regular file under `root` (but `.snapshots`) with its SHA-256."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".snapshots"]
        for name in filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def make_program(root: Path, name: str, files: int = 12) -> None:
    """A small test program: sources, a pattern file and a binary."""
    prog = root / "pgm" / name
    (prog / "src").mkdir(parents=True)
    for i in range(files):
        (prog / "src" / f"flow{i}.c").write_text(f"/* {name} step {i} */\nint f{i};\n" * 50)
    (prog / "patterns.atp").write_bytes(os.urandom(300_000))
    (prog / "limits.csv").write_text("test,lo,hi\nvdd,0.9,1.1\n")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(workdir.parent / "srv", write_tokens(workdir.parent / "tokens.json"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def tool(workdir: Path, store_dir: Path, server: ServerProcess) -> Iterator[SyncMount]:
    config = sync_config(workdir.parent / "tool.toml", store_dir, [server.url], TOOL_A, NS_A)
    mount = SyncMount(workdir, config)
    yield mount
    mount.stop()


def test_one_file_deleted_or_overwritten(workdir: Path, store_dir: Path, tool: SyncMount) -> None:
    """`dpmsfs log FILE` shows its versions; `cp` from `.snapshots/<NAME>/` brings one back."""
    make_program(workdir, "dev7")
    flow = workdir / "pgm/dev7/src/flow3.c"
    good = flow.read_bytes()
    name = ok(tool.cli("snapshot", "--label", "good")).strip()
    flow.write_text("overwritten by mistake\n")
    ok(tool.cli("snapshot"))

    history = ok(run_cli("log", str(flow), "--store", str(store_dir)))
    assert name in history, history

    (workdir / "pgm/dev7/src/flow3.c").unlink()
    shutil.copy2(workdir / ".snapshots" / name / "pgm/dev7/src/flow3.c", flow)
    assert flow.read_bytes() == good


def test_rm_rf_of_a_program_tree(workdir: Path, tool: SyncMount) -> None:
    """`dpmsfs snapshots`, then `dpmsfs restore WORKDIR --snapshot NAME pgm/PROG`: the tree
    comes back exactly, and a `pre-restore` snapshot keeps the state before it."""
    make_program(workdir, "dev7")
    make_program(workdir, "dev8")
    before = tree_digest(workdir / "pgm/dev7")
    name = ok(tool.cli("snapshot")).strip()
    (workdir / "pgm/dev7/stray.tmp").write_text("made after the snapshot\n")
    subprocess.run(["rm", "-rf", str(workdir / "pgm/dev7/src")], check=True)

    listing = json.loads(ok(tool.cli("snapshots", "--json")))
    assert name in [s["name"] for s in listing]

    config = str(tool.config_file)
    ok(run_cli("restore", str(workdir), "--snapshot", name, "pgm/dev7", "--config", config))
    assert tree_digest(workdir / "pgm/dev7") == before  # exact: the stray file is gone too
    labels = [s.get("label") for s in json.loads(ok(tool.cli("snapshots", "--json")))]
    assert "pre-restore" in labels


def test_tool_disk_formatted_and_store_gone(
    workdir: Path, store_dir: Path, server: ServerProcess, tool: SyncMount
) -> None:
    """Nothing left on the tool but the token: `dpmsfs snapshots --server`, `dpmsfs restore
    --server ... --to WORKDIR`, then mount with a new store: sync sends no content again."""
    make_program(workdir, "dev7")
    (workdir / "bin").mkdir()
    (workdir / "bin/tester.elf").write_bytes(os.urandom(2_000_000))
    expect = tree_digest(workdir)
    ok(tool.cli("sync", "--snapshot", "--wait", "--timeout", "120"))
    token_file = tool.config_file.with_suffix(".token")
    tool.stop()

    # The disk is formatted: the work directory and the store are gone.
    force_unmount(workdir)
    shutil.rmtree(workdir)
    shutil.rmtree(store_dir)
    workdir.mkdir(mode=0o755)

    remote = ["--server", server.url, "--tool", NS_A, "--token-file", str(token_file)]
    names = json.loads(ok(run_cli("snapshots", *remote, "--json")))
    assert names, "the server lists the tool's snapshots"
    ok(run_cli("restore", *remote, "--snapshot", "latest", "--to", str(workdir), timeout=300))
    assert tree_digest(workdir) == expect
    assert not any(p.name.startswith(".dpmsfs-restore") for p in workdir.iterdir())

    config = sync_config(workdir.parent / "new.toml", workdir.parent / "store-new",
                         [server.url], TOOL_A, NS_A)  # fmt: skip
    again = SyncMount(workdir, config)
    try:
        ok(again.cli("sync", "--snapshot", "--wait", "--timeout", "120"))
        sent = again.sync_status()["uploaded"]["bytes"]
        assert sent < 50_000, f"{sent} bytes uploaded again after a restore from the server"
        assert tree_digest(workdir) == expect
    finally:
        again.stop()


def test_work_disk_formatted_store_on_second_disk(
    workdir: Path, store_dir: Path, tool: SyncMount
) -> None:
    """The work directory's disk is formatted but the store (second disk) survives:
    re-create the empty directory, mount, `dpmsfs restore WORKDIR --snapshot latest`."""
    make_program(workdir, "dev7")
    expect = tree_digest(workdir)
    ok(tool.cli("snapshot"))
    tool.stop()

    force_unmount(workdir)
    shutil.rmtree(workdir)
    workdir.mkdir(mode=0o755)

    again = SyncMount(workdir, tool.config_file)
    try:
        ok(run_cli("restore", str(workdir), "--snapshot", "latest", "--config",
                   str(tool.config_file), timeout=300))  # fmt: skip
        assert tree_digest(workdir) == expect
    finally:
        again.stop()
