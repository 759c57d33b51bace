"""`dpmsfs-server prune` against real server processes and their data directories.

Snapshots are built as the tool builds them (dpmsfs's own tree encoder and SnapshotRecord),
uploaded over HTTP with tool tokens; prune runs as its own process while the server is
stopped, and the restarted server is checked over HTTP and by `dpmsfs-server verify`.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chunker import decompress_chunk
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.tree import EntryType, TreeEntry, encode_tree
from remote import treewalk
from remote.errors import NotFoundError
from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import (
    ADMIN,
    NS_A,
    NS_B,
    REPO,
    TOOL_A,
    TOOL_B,
    ServerProcess,
    server_cmd,
    write_tokens,
)

DAY_NS = 86400 * 10**9
T0 = 1_790_000_000 * 10**9


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A stopped-at-teardown server over tmp_path/data (tests stop and restart it)."""
    proc = ServerProcess(tmp_path / "data", write_tokens(tmp_path / "tokens.json")).start()
    yield proc
    proc.stop()


def backend(server: ServerProcess, ns: str = NS_A, token: str = TOOL_A) -> HttpBackend:
    return HttpBackend([server.url], ns, token, retrier=Retrier(NO_RETRY))


def upload_snapshot(
    b: HttpBackend, name: str, time_ns: int, files: dict[str, bytes], label: str = ""
) -> dict[str, str]:
    """Upload files (in a subdirectory `sub/`, plus `top.txt`), their trees and the ref,
    in the tool's order; return {file name: chunk id} plus the two tree ids."""
    records = []
    ids: dict[str, str] = {}
    entries = []
    for fname, content in sorted(files.items()):
        rec = make_record(content)
        records.append(rec)
        ids[fname] = rec[0]
        entries.append(
            TreeEntry(
                fname.encode(), EntryType.FILE, 0o644, 0, 0, len(content), time_ns,
                xattrs=((b"user.x", b"1"),), content=(bytes.fromhex(rec[0]),),
            )
        )  # fmt: skip
    link = TreeEntry(b"link", EntryType.SYMLINK, 0o777, 0, 0, 3, time_ns, target=b"top")
    sub = make_record(encode_tree([*entries, link]))
    top_content = f"top of {name}".encode()
    top = make_record(top_content)
    root_entries = [
        TreeEntry(b"sub", EntryType.DIR, 0o755, 0, 0, 0, time_ns, content=(bytes.fromhex(sub[0]),)),
        TreeEntry(b"top.txt", EntryType.FILE, 0o644, 0, 0, len(top_content), time_ns,
                  content=(bytes.fromhex(top[0]),)),
    ]  # fmt: skip
    root = make_record(encode_tree(root_entries))
    b.upload([*records, top, sub, root])
    record = SnapshotRecord(name, time_ns, bytes.fromhex(root[0]), label=label, tool_id=b.namespace)
    b.put_ref(f"snapshot.{name}", record.encode())
    ids["<sub>"], ids["<root>"], ids["<top>"] = sub[0], root[0], top[0]
    return ids


def prune_cmd(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("prune", "--data", str(data), *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify_cmd(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("verify", "--data", str(data)), cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def present(b: HttpBackend, id: str) -> bool:
    try:
        b.load(id)
    except NotFoundError:
        return False
    return True


def age_everything(data: Path) -> None:
    """Make every mapping and blob look confirmed/written long ago (beyond any grace)."""
    for index in (data / "ns").glob("*/index.sqlite"):
        with sqlite3.connect(index) as db:
            db.execute("UPDATE touched SET at_s = 0")
    old = time.time() - 30 * 86400
    for blob in (data / "pool").rglob("*"):
        if blob.is_file():
            os.utime(blob, (old, old))


def pool_has(data: Path, digest: str) -> bool:
    return (data / "pool" / digest[:2] / digest[2:4] / digest).exists()


def test_prune_forgets_by_policy_and_reclaims_only_the_unreachable(server: ServerProcess) -> None:
    data = server.data
    shared = b"shared build binary " + secrets.token_bytes(3000)
    unique = {i: secrets.token_bytes(4000) for i in range(5)}
    snaps = {}
    with backend(server) as a:
        for i in range(5):
            label = "pre-restore" if i == 1 else ""
            snaps[i] = upload_snapshot(
                a, f"2026-11-0{i + 1}T000000Z", T0 + i * DAY_NS,
                {"shared.bin": shared, f"u{i}.dat": unique[i]}, label,
            )  # fmt: skip
        a.put_ref("pin.2026-11-03T000000Z", b'{"reason": "audit"}')
    with backend(server, NS_B, TOOL_B) as b:
        # tool B holds the same content as A's forgotten snapshot 0: its blob must stay
        upload_snapshot(b, "2026-11-01T000000Z", T0, {"copy.dat": unique[0]})
    server.stop()
    age_everything(data)

    dry = prune_cmd(data, "--tool", NS_A, "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would forget 2 of 5 snapshots" in dry.stdout
    assert "forget 2026-11-01T000000Z" in dry.stdout
    assert "keep   2026-11-02T000000Z (label pre-restore)" in dry.stdout
    assert "keep   2026-11-03T000000Z (pinned)" in dry.stdout

    server.start()
    with backend(server) as a:
        assert len([r for r in a.list_refs() if r.startswith("snapshot.")]) == 5  # dry run
        assert present(a, snaps[0]["u0.dat"])
    server.stop()

    done = prune_cmd(data, "--tool", NS_A, "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    # forgotten: snapshots 0 and 3 (index 3 = 2026-11-04); their unique objects go
    assert "forgot 2 of 5 snapshots" in done.stdout
    assert verify_cmd(data).returncode == 0

    server.start()
    with backend(server) as a:
        refs = sorted(r for r in a.list_refs() if r.startswith("snapshot."))
        assert refs == [
            "snapshot.2026-11-02T000000Z",
            "snapshot.2026-11-03T000000Z",
            "snapshot.2026-11-05T000000Z",
        ]
        for gone in (0, 3):
            for key in (f"u{gone}.dat", "<root>", "<sub>", "<top>"):
                assert not present(a, snaps[gone][key]), (gone, key)
        for kept in (1, 2, 4):
            for key, id in snaps[kept].items():
                assert present(a, id), (kept, key)
        assert present(a, snaps[0]["shared.bin"])  # reached by the kept ones
        assert a.missing([(snaps[3]["u3.dat"], None)]) == [snaps[3]["u3.dat"]]
    with backend(server, NS_B, TOOL_B) as b:
        assert (
            decompress_chunk(b.load(snaps[0]["u0.dat"])) == unique[0]
        )  # shared blob kept for tool B
    server.stop()
    u3_digest = make_record(unique[3])[1]
    u0_digest = make_record(unique[0])[1]
    assert not pool_has(data, u3_digest)
    assert pool_has(data, u0_digest)


def test_grace_keeps_what_a_tool_was_just_told_is_present(server: ServerProcess) -> None:
    """A tool asks `missing` (answer: present), the server is stopped and pruned, and the
    tool's snapshot ref lands after the restart: the object must still be there."""
    data = server.data
    reused = secrets.token_bytes(5000)
    dropped = secrets.token_bytes(5000)
    with backend(server) as a:
        old = upload_snapshot(a, "2026-11-01T000000Z", T0, {"r.dat": reused, "d.dat": dropped})
        upload_snapshot(a, "2026-11-02T000000Z", T0 + DAY_NS, {"other.dat": b"x" * 100})
    server.stop()
    age_everything(data)
    server.start()
    with backend(server) as a:
        # the tool's next snapshot would reuse r.dat: the server says it has it
        assert a.missing([(old["r.dat"], None)]) == []
    server.stop()

    done = prune_cmd(data, "--tool", NS_A, "--keep-last", "1", "--grace", "1h")
    assert done.returncode == 0, done.stderr
    server.start()
    with backend(server) as a:
        assert present(a, old["r.dat"])  # confirmed within the grace: kept
        assert not present(a, old["d.dat"])  # unreached and not confirmed: gone
    server.stop()
    assert verify_cmd(data).returncode == 0


def test_prune_refuses_while_serving_and_tool_tokens_cannot_delete(server: ServerProcess) -> None:
    data = server.data
    try:
        with backend(server) as a:
            ids = upload_snapshot(a, "2026-11-01T000000Z", T0, {"f": b"content"})
        busy = prune_cmd(data, "--tool", NS_A, "--keep-last", "1")
        assert busy.returncode == 5
        assert "in use by another dpmsfs-server" in busy.stderr
        assert "Traceback" not in busy.stderr
        tool = {"Authorization": f"Bearer {TOOL_A}"}
        for path in ("refs/snapshot.2026-11-01T000000Z", f"objects/{ids['f']}"):
            resp = requests.delete(f"{server.url}/v2/{NS_A}/{path}", headers=tool, timeout=10)
            assert resp.status_code == 403
            assert resp.json()["error"] == "forbidden"
        with backend(server) as a:
            assert present(a, ids["f"])
            assert "snapshot.2026-11-01T000000Z" in a.list_refs()
    finally:
        server.stop()


def test_prune_stops_without_deleting_when_a_kept_tree_is_missing(server: ServerProcess) -> None:
    data = server.data
    with backend(server) as a:
        first = upload_snapshot(a, "2026-11-01T000000Z", T0, {"a": secrets.token_bytes(100)})
        last = upload_snapshot(a, "2026-11-02T000000Z", T0 + DAY_NS, {"b": b"b" * 50})
    with backend(server, NS_A, ADMIN) as admin:
        admin.delete(last["<sub>"])
    server.stop()
    age_everything(data)
    out = prune_cmd(data, "--tool", NS_A, "--keep-last", "1")
    assert out.returncode == 1
    assert "nothing deleted" in out.stderr and last["<sub>"] in out.stderr
    server.start()
    with backend(server) as a:
        assert "snapshot.2026-11-01T000000Z" in a.list_refs()
        assert present(a, first["a"])
    server.stop()


def test_prune_usage_errors_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ServerProcess(data, write_tokens(tmp_path / "tokens.json")).start().stop()
    for args, code, text in (
        (["--tool", NS_A], 2, "at least one --keep-* rule"),
        (["--tool", NS_A, "--keep-within", "7x"], 2, "bad duration"),
        (["--tool", "../x", "--keep-last", "1"], 2, "invalid tool id"),
        (["--tool", "nosuch", "--keep-last", "1"], 3, "no namespace"),
    ):
        out = prune_cmd(data, *args)
        assert out.returncode == code, (args, out.stderr)
        assert text in out.stderr and "Traceback" not in out.stderr
    out = prune_cmd(tmp_path / "empty", "--tool", NS_A, "--keep-last", "1")
    assert out.returncode == 3 and "not a dpmsfs-server data directory" in out.stderr


def test_kill_9_during_prune_leaves_a_store_that_verifies_clean(server: ServerProcess) -> None:
    data = server.data
    with backend(server) as a:
        for i in range(4):
            files = {f"f{j}": secrets.token_bytes(200) for j in range(300)}
            upload_snapshot(a, f"2026-11-0{i + 1}T000000Z", T0 + i * DAY_NS, files)
    server.stop()
    age_everything(data)
    # once for certain in the middle: right after it forgot its first snapshot ref
    proc = subprocess.Popen(
        server_cmd(
            "prune", "--data", str(data), "--tool", NS_A, "--keep-last", "1",
            "--log-level", "INFO",
        ),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "forgot snapshot" in line:
            proc.kill()
            break
    proc.wait(timeout=10)
    proc.stderr.close()
    checked = verify_cmd(data)
    assert checked.returncode == 0, checked.stdout
    # then at arbitrary instants of the rest
    for delay in (0.15, 0.4, 0.8):
        proc = subprocess.Popen(
            server_cmd("prune", "--data", str(data), "--tool", NS_A, "--keep-last", "1"),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=10)
        checked = verify_cmd(data)
        assert checked.returncode == 0, checked.stdout
    final = prune_cmd(data, "--tool", NS_A, "--keep-last", "1")
    assert final.returncode == 0, final.stderr
    assert verify_cmd(data).returncode == 0
    server.start()
    with backend(server) as a:
        assert [r for r in a.list_refs() if r.startswith("snapshot.")] == [
            "snapshot.2026-11-04T000000Z"
        ]
        assert a.stats()["objects"] == 300 + 3
    server.stop()


def test_tree_decoder_reads_what_the_tool_encodes_and_refuses_garbage() -> None:
    chunk_ids = tuple(secrets.token_bytes(16) for _ in range(3))
    sub_id = secrets.token_bytes(16)
    tree = encode_tree(
        [
            TreeEntry(b"a", EntryType.FILE, 0o644, 1, 2, 30, 5, xattrs=((b"user.k", b"v" * 9),),
                      content=chunk_ids),
            TreeEntry(b"d", EntryType.DIR, 0o755, 0, 0, 0, 5, content=(sub_id,)),
            TreeEntry(b"l", EntryType.SYMLINK, 0o777, 0, 0, 1, 5, target=b"a"),
            TreeEntry(b"p", EntryType.FIFO, 0o600, 0, 0, 0, 5),
        ]
    )  # fmt: skip
    assert list(treewalk.references(tree)) == [(False, c) for c in chunk_ids] + [(True, sub_id)]
    for bad in (tree[:-1], tree + b"\0", b"DTRX" + tree[4:], tree[:9]):
        try:
            list(treewalk.references(bad))
        except treewalk.TreeDecodeError:
            continue
        raise AssertionError(f"accepted a malformed tree of {len(bad)} bytes")
