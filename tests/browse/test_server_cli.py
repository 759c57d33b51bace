"""`dpmsfs restore --server` and `.snapshots` reads through real parts: a real mount
takes the snapshot, a real dpmsfs-server process on loopback holds it, the CLI runs as a
child process (and is killed with SIGKILL half-way)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpmsfs.store import schema
from dpmsfs.store.store import Store
from tests.browse.upload import snapshot_objects, upload_snapshot
from tests.mount.conftest import CliMount, cli_snapshot, fuse_usable, run_cli, wait_for
from tests.mount.test_restore import build, state
from tests.remote.serverproc import NS_A, TOOL_A, TOOL_B, ServerProcess, write_tokens

remote_http = pytest.importorskip("remote.http_backend")
pytestmark = [
    pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse"),
    pytest.mark.skipif(
        not hasattr(remote_http.HttpBackend, "load_many"), reason="needs the /v2 HttpBackend"
    ),
]


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


def backend(server: ServerProcess, token: str = TOOL_A) -> object:
    return remote_http.HttpBackend([server.url], NS_A, token)


def publish(store_dir: Path, server: ServerProcess, name: str) -> list[bytes]:
    """Upload the snapshot (as the daemon's sync would); the ids it reaches."""
    store = Store.open(str(store_dir), readonly=True)
    client = backend(server)
    try:
        upload_snapshot(store, client, name)
        return snapshot_objects(store, name)
    finally:
        client.close()  # type: ignore[attr-defined]
        store.close()


def server_restore(
    server: ServerProcess, token_file: Path, target: Path, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli("restore", "--server", url or server.url, "--tool", NS_A, "--token-file",
                   str(token_file), "--to", str(target), *args)  # fmt: skip


@pytest.fixture
def published(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> Iterator[tuple[Path, str, list[bytes]]]:
    """A work directory with every kind of entry, snapshotted and put on the server."""
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        build(workdir)
        name = cli_snapshot(workdir, store_dir)
        ids = publish(store_dir, server, name)
        yield workdir, name, ids
    finally:
        mount.stop()


def test_full_restore_onto_an_empty_disk_equals_the_original(
    published: tuple[Path, str, list[bytes]],
    server: ServerProcess,
    token_file: Path,
    tmp_path: Path,
) -> None:
    workdir, name, ids = published
    target = tmp_path / "formatted"
    result = server_restore(server, token_file, target, "--snapshot", "latest", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["snapshot"] == name and report["fetched_objects"] == len(ids)
    assert state(target) == state(workdir, skip=(".snapshots",))
    assert os.stat(target / "h1").st_ino == os.stat(target / "pgm" / "h2").st_ino
    assert sorted(os.listdir(target)) == sorted(set(os.listdir(workdir)) - {".snapshots"})

    listing = run_cli("snapshots", "--server", server.url, "--tool", NS_A, "--token-file",
                      str(token_file))  # fmt: skip
    assert listing.returncode == 0 and name in listing.stdout


def test_errors_are_one_clear_line(
    published: tuple[Path, str, list[bytes]],
    server: ServerProcess,
    token_file: Path,
    tmp_path: Path,
    free_url: str,
) -> None:
    _, name, _ = published
    wrong = tmp_path / "wrong.token"
    wrong.write_text(TOOL_B)  # a real token, for another tool's namespace
    unknown = tmp_path / "unknown.token"
    unknown.write_text("not-a-token")
    cases = [
        (server_restore(server, wrong, tmp_path / "t1", "--snapshot", name), 4, "token"),
        (server_restore(server, unknown, tmp_path / "t2", "--snapshot", name), 4, "token"),
        (server_restore(server, token_file, tmp_path / "t3", "--snapshot", "2001-01-01T000000Z"),
         3, "no snapshot named 2001-01-01T000000Z"),
        (server_restore(server, token_file, tmp_path / "t4", "--snapshot", name, "pgm/../..",),
         2, "'..' is not allowed"),
        (server_restore(server, token_file, tmp_path / "t5", "--snapshot", name, "--retry-seconds",
                        "0.5", url=free_url), 4, "no server answered"),
        (run_cli("restore", "--server", server.url, "--tool", "nobody", "--token-file",
                 str(token_file), "--to", str(tmp_path / "t6"), "--snapshot", "latest"),
         4, "token"),
    ]  # fmt: skip
    for result, code, text in cases:
        assert result.returncode == code, (result.args, result.stderr)
        assert text in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for n in (1, 2, 3, 4, 5, 6):
        assert not (tmp_path / f"t{n}").exists() or not os.listdir(tmp_path / f"t{n}")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine").write_text("x")
    result = server_restore(server, token_file, busy, "--snapshot", name)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert os.listdir(busy) == ["mine"]


def big_tree(root: Path) -> dict[str, int]:
    """Enough data that a restore takes a while: many small files and a few large ones."""
    sizes = {}
    for i in range(400):
        sizes[f"src/d{i % 8}/f{i}.c"] = 20_000 + i * 37
    for i in range(6):
        sizes[f"logs/run{i}.stdf"] = (6 << 20) + i
    for path, size in sizes.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        with open(root / path, "wb") as f:
            f.write(os.urandom(size))
    return sizes


def test_killed_restore_resumes_without_fetching_finished_files_again(
    workdir: Path, store_dir: Path, server: ServerProcess, token_file: Path, tmp_path: Path
) -> None:
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        big_tree(workdir)
        name = cli_snapshot(workdir, store_dir)
        ids = publish(store_dir, server, name)
        target = tmp_path / "formatted"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.cli.main", "restore", "--server", server.url,
             "--tool", NS_A, "--token-file", str(token_file), "--to", str(target),
             "--snapshot", name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def some_files_done() -> bool:
            done = sum(1 for p in (target / "src").rglob("*.c")) if (target / "src").is_dir() else 0
            return done >= 40 or proc.poll() is not None

        wait_for(some_files_done, timeout=60, what="the restore to get going")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = {
            str(p.relative_to(target)): p.read_bytes()
            for p in target.rglob("*")
            if p.is_file() and not p.name.startswith(".dpmsfs-restore-")
        }
        for path, data in finished.items():  # never half a file under its name
            assert data == (workdir / path).read_bytes(), path
        assert finished, "nothing was restored before the kill"

        result = server_restore(server, token_file, target, "--snapshot", name, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["resumed"] and report["kept"] >= len(finished)
        # the files finished before the kill were not fetched again
        assert report["fetched_objects"] < len(ids)
        assert state(target) == state(workdir, skip=(".snapshots",))
    finally:
        mount.stop()


def forget_locally(store_dir: Path, oids: list[bytes]) -> None:
    store = Store.open(str(store_dir))
    try:
        with store.db.write() as txn:
            for oid in oids:
                txn.delete(schema.T_OBJECTS, oid)
    finally:
        store.close()


def test_snapshots_read_of_a_chunk_missing_locally_is_served_by_the_server(
    workdir: Path, store_dir: Path, server: ServerProcess, token_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tool.toml"
    config.write_text(
        f'store = "{store_dir}"\ntool_id = "{NS_A}"\nserver = ["{server.url}"]\n'
        f'token_file = "{token_file}"\n'
    )
    data = os.urandom(5 << 20)
    mount = CliMount(workdir, "--config", str(config))
    try:
        (workdir / "datalog.stdf").write_bytes(data)
        name = cli_snapshot(workdir, store_dir)
    finally:
        mount.stop()
    publish(store_dir, server, name)
    store = Store.open(str(store_dir), readonly=True)
    try:
        from dpmsfs.browse.reader import SnapshotReader

        reader = SnapshotReader(store)
        entry = reader.lookup(reader.snapshot(name).root_tree_id, b"datalog.stdf")
        assert entry is not None and len(entry.content) > 1
        lost = list(entry.content[1:3])
    finally:
        store.close()
    forget_locally(store_dir, lost)

    mount = CliMount(workdir, "--config", str(config))
    try:
        mount.wait_for_view()
        copy = workdir / ".snapshots" / name / "datalog.stdf"
        started = time.monotonic()
        assert copy.read_bytes() == data
        assert time.monotonic() - started < 30
    finally:
        mount.stop()
    assert "reading it from the server" in mount.log_path.read_text()


def test_disk_full_is_one_line_and_the_same_command_resumes(
    workdir: Path, store_dir: Path, server: ServerProcess, token_file: Path, tmp_path: Path
) -> None:
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        for i in range(4):
            (workdir / f"log{i}.stdf").write_bytes(os.urandom(1 << 20))
        (workdir / "small.txt").write_text("small")
        name = cli_snapshot(workdir, store_dir)
        publish(store_dir, server, name)
        target = tmp_path / "small-disk"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(target)],
                       check=True)  # fmt: skip
        try:
            result = server_restore(server, token_file, target, "--snapshot", name)
            assert result.returncode == 1, result.stderr
            assert "disk full" in result.stderr and "run the same command again" in result.stderr
            assert result.stderr.strip().count("\n") <= 1 and "Traceback" not in result.stderr
            for path in target.glob("log*.stdf"):  # what is there is complete
                assert path.read_bytes() == (workdir / path.name).read_bytes()
            subprocess.run(["mount", "-o", "remount,size=20m", str(target)], check=True)
            again = server_restore(server, token_file, target, "--snapshot", name, "--json")
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["resumed"]
            assert state(target) == state(workdir, skip=(".snapshots",))
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
    finally:
        mount.stop()


def test_a_chunk_corrupted_on_the_server_is_a_clear_error_and_never_written(
    workdir: Path, store_dir: Path, server: ServerProcess, token_file: Path, tmp_path: Path
) -> None:
    import hashlib

    from dpmsfs.browse.reader import SnapshotReader

    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        (workdir / "good.txt").write_text("fine")
        (workdir / "bad.stdf").write_bytes(os.urandom(3 << 20))
        name = cli_snapshot(workdir, store_dir)
        publish(store_dir, server, name)
        store = Store.open(str(store_dir), readonly=True)
        try:
            reader = SnapshotReader(store)
            entry = reader.lookup(reader.snapshot(name).root_tree_id, b"bad.stdf")
            assert entry is not None
            victim = entry.content[-1]
            digest = hashlib.sha256(store.read_object(victim)).hexdigest()
        finally:
            store.close()
    finally:
        mount.stop()
    blob = server.data / "pool" / digest[:2] / digest[2:4] / digest
    damaged = bytearray(blob.read_bytes())
    damaged[-1] ^= 0xFF  # a bit flip in the frame's payload, as a failing disk would
    blob.write_bytes(bytes(damaged))

    target = tmp_path / "formatted"
    result = server_restore(server, token_file, target, "--snapshot", name)
    assert result.returncode == 3, result.stderr
    assert f"no intact copy of object {victim.hex()}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (target / "bad.stdf").exists()  # nothing silently wrong written
    leftovers = [p for p in target.iterdir() if p.name not in ("good.txt",)]
    assert [p.name for p in leftovers] == [".dpmsfs-restore-state.json"]


def test_progress_on_a_terminal_only(
    published: tuple[Path, str, list[bytes]],
    server: ServerProcess,
    token_file: Path,
    tmp_path: Path,
) -> None:
    import pty

    _, name, _ = published
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpmsfs.cli.main", "restore", "--server", server.url, "--tool",
         NS_A, "--token-file", str(token_file), "--to", str(tmp_path / "tty"), "--snapshot",
         name],
        stdout=subprocess.DEVNULL, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    shown = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    assert b"\rrestored " in shown and b"/s" in shown

    quiet = server_restore(server, token_file, tmp_path / "pipe", "--snapshot", name)
    assert quiet.returncode == 0 and "\r" not in quiet.stderr
