"""Online prune: `POST /v2/<ns>/prune` inside a running dpmsfs-server, and its CLI.

Real server processes on loopback, tools as HttpBackend clients doing what the pusher does
(`objects:missing` with digests, upload of what is missing, then the snapshot ref), prune
in a loop beside them, kill -9 of the server in the middle of a prune, and
`dpmsfs-server verify` on the result.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chunker import decompress_chunk
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.tree import EntryType, TreeEntry, decode_tree, encode_tree
from remote.errors import ForgottenError
from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import (
    ADMIN,
    NS_A,
    NS_B,
    REPLICATE,
    REPO,
    TOOL_A,
    TOOL_ANY,
    ServerProcess,
    server_cmd,
    write_tokens,
)
from tests.remote.test_server_prune import age_everything, upload_snapshot

DAY_NS = 86400 * 10**9
T0 = 1_790_000_000 * 10**9
MIN_GRACE = "4s"  # tools re-confirm every 2 s; a test sync pass takes well under that


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "data",
        write_tokens(tmp_path / "tokens.json"),
        ("--prune-min-grace", MIN_GRACE, "--log-level", "INFO"),
    ).start()
    yield proc
    proc.stop()


def backend(server: ServerProcess, ns: str = NS_A, token: str = TOOL_A) -> HttpBackend:
    return HttpBackend([server.url], ns, token, retrier=Retrier(NO_RETRY))


def post_prune(
    server: ServerProcess, token: str | None, ns: str, body: object
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{server.url}/v2/{ns}/prune", json=body, headers=headers, timeout=120)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("prune", *args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def verify_cmd(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("verify", "--data", str(data)), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def token_file(tmp: Path, token: str) -> str:
    path = tmp / f"token-{secrets.token_hex(4)}"
    path.write_text(token + "\n", encoding="utf-8")
    return str(path)


def test_only_an_admin_token_may_prune_and_bad_requests_are_refused(
    server: ServerProcess,
) -> None:
    with backend(server) as a:
        for i in range(3):
            upload_snapshot(a, f"2026-11-0{i + 1}T000000Z", T0 + i * DAY_NS, {"f": b"x" * 10})
    policy = {"keep_last": 1, "dry_run": True}
    assert post_prune(server, None, NS_A, policy).status_code == 401
    for token in (TOOL_A, TOOL_ANY, REPLICATE):
        answer = post_prune(server, token, NS_A, {"keep_last": 1})
        assert answer.status_code == 403, token
        assert answer.json()["error"] == "forbidden"
    for body, why in (
        ({}, "keep_"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": 1, "grace": "1s"}, "shorter than this server's minimum"),
        ({"keep_last": 1, "frobnicate": 1}, "unknown field"),
        ({"keep_last": 1, "dry_run": "yes"}, "dry_run"),
        ([1, 2], "JSON object"),
    ):
        answer = post_prune(server, ADMIN, NS_A, body)
        assert answer.status_code == 400, body
        assert why in answer.json()["message"], answer.json()
    assert post_prune(server, ADMIN, "nosuchtool", {"keep_last": 1}).status_code == 404
    # nothing was forgotten by any refused request
    with backend(server) as a:
        assert len([r for r in a.list_refs() if r.startswith("snapshot.")]) == 3
    answer = post_prune(server, ADMIN, NS_A, {"keep_last": 1, "dry_run": True, "grace": "4s"})
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["dry_run"] is True and len(doc["forgotten"]) == 2
    with backend(server) as a:
        assert len([r for r in a.list_refs() if r.startswith("snapshot.")]) == 3


def test_cli_prunes_a_running_server_and_says_why_it_cannot(
    server: ServerProcess, tmp_path: Path
) -> None:
    with backend(server) as a:
        kept = {}
        for i in range(3):
            files = {f"f{j}-{i}": secrets.token_bytes(300) for j in range(5)}
            kept = upload_snapshot(a, f"2026-11-0{i + 1}T000000Z", T0 + i * DAY_NS, files)
    server.stop()
    age_everything(server.data)
    server.start()
    admin = token_file(tmp_path, ADMIN)
    dry = cli("--server", server.url, "--token-file", admin, "--tool", NS_A, "--keep-last",
              "1", "--grace", "4s", "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would forget 2 of 3 snapshots" in dry.stdout
    assert "forget 2026-11-01T000000Z" in dry.stdout
    done = cli("--server", server.url, "--token-file", admin, "--tool", NS_A, "--keep-last",
               "1", "--grace", "4s")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "forgot 2 of 3 snapshots" in done.stdout
    assert "removed 16 mappings" in done.stdout  # two snapshots of 5 files, top, 2 trees
    with backend(server) as a:
        assert [r for r in a.list_refs() if r.startswith("snapshot.")] == [
            "snapshot.2026-11-03T000000Z"
        ]
        for id in kept.values():
            assert decompress_chunk(a.load(id))
    # errors: one line, documented exit codes
    tool = token_file(tmp_path, TOOL_A)
    cases = [
        (["--server", server.url, "--token-file", tool, "--tool", NS_A, "--keep-last", "1"], 3),
        (["--server", server.url, "--tool", NS_A, "--keep-last", "1"], 2),
        (["--server", server.url, "--token-file", admin, "--tool", NS_A, "--keep-last", "1",
          "--grace", "1s"], 2),
        (["--server", server.url, "--token-file", admin, "--tool", "absent", "--keep-last",
          "1"], 2),
        (["--server", "http://127.0.0.1:9", "--token-file", admin, "--tool", NS_A,
          "--keep-last", "1"], 6),
        (["--tool", NS_A, "--keep-last", "1"], 2),
    ]  # fmt: skip
    for args, code in cases:
        got = cli(*args)
        assert got.returncode == code, (args, got.stderr)
        assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr, got.stderr
    assert verify_cmd(server.data).returncode == 0


class Tool:
    """One tool syncing in a loop the way the pusher does: missing (with digests), upload
    what is missing, then the snapshot ref. Files come from a pool shared by all tools, so
    `missing` claims by digest across namespaces and contents leave and come back."""

    def __init__(self, server: ServerProcess, ns: str, shared: list[bytes]) -> None:
        self.backend = HttpBackend([server.url], ns, TOOL_ANY, retrier=Retrier(NO_RETRY))
        self.ns = ns
        self.shared = shared
        self.snapshots: dict[str, dict[bytes, bytes]] = {}  # name -> {file name: content}
        self.error: BaseException | None = None
        self.rng = random.Random(ns)

    def sync_once(self, n: int) -> None:
        files = {f"s{i}".encode(): c for i, c in enumerate(self.rng.sample(self.shared, 12))}
        files[b"own"] = f"{self.ns} {n}".encode() * 20
        records = {name: make_record(content) for name, content in files.items()}
        t = T0 + n * 3600 * 10**9
        entries = [
            TreeEntry(name, EntryType.FILE, 0o644, 0, 0, len(files[name]), t,
                      content=(bytes.fromhex(rec[0]),))
            for name, rec in sorted(records.items())
        ]  # fmt: skip
        root = make_record(encode_tree(entries))
        everything = [*records.values(), root]
        missing = set(self.backend.missing([(r[0], r[1]) for r in everything]))
        self.backend.upload([r for r in everything if r[0] in missing])
        name = f"2026-11-01T{n // 60:02d}{n % 60:02d}00Z"
        record = SnapshotRecord(name, t, bytes.fromhex(root[0]), tool_id=self.ns)
        self.backend.put_ref(f"snapshot.{name}", record.encode())
        self.snapshots[name] = files

    def run(self, stop: threading.Event) -> None:
        try:
            n = 0
            while not stop.is_set():
                self.sync_once(n)
                n += 1
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc

    def check_every_kept_snapshot(self) -> int:
        """Restore every snapshot the server still has, byte for byte; how many."""
        refs = self.backend.list_refs()
        kept = [r[len("snapshot.") :] for r in refs if r.startswith("snapshot.")]
        for name in kept:
            record = SnapshotRecord.decode(self.backend.get_ref(f"snapshot.{name}"))
            tree = decode_tree(decompress_chunk(self.backend.load(record.root_tree_id.hex())))
            got = {e.name: decompress_chunk(self.backend.load(e.content[0].hex())) for e in tree}
            assert got == self.snapshots[name], f"{self.ns} {name} does not restore"
        return len(kept)


def test_prune_in_a_loop_while_tools_sync_loses_nothing_kept(server: ServerProcess) -> None:
    shared = [secrets.token_bytes(2000) for _ in range(40)]
    tools = [Tool(server, ns, shared) for ns in (NS_A, NS_B, "toolc")]
    stop = threading.Event()
    threads = [threading.Thread(target=t.run, args=(stop,)) for t in tools]
    for th in threads:
        th.start()
    removed = blobs = prunes = 0
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for tool in tools:
                if tool.snapshots:
                    answer = post_prune(server, ADMIN, tool.ns, {"keep_last": 3, "grace": "4s"})
                    assert answer.status_code == 200, answer.text
                    removed += answer.json()["mappings_removed"]
                    blobs += answer.json()["blobs_removed"]
                    prunes += 1
            time.sleep(0.2)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    for tool in tools:
        assert tool.error is None, repr(tool.error)
    assert prunes > 10 and removed > 0 and blobs > 0, (prunes, removed, blobs)
    # a verify beside the running server (and beside a last prune) reports no damage
    last = threading.Thread(
        target=lambda: [post_prune(server, ADMIN, t.ns, {"keep_last": 2, "grace": "4s"})
                        for t in tools]
    )  # fmt: skip
    last.start()
    beside = verify_cmd(server.data)
    last.join()
    assert beside.returncode == 0, beside.stdout
    for tool in tools:
        assert tool.check_every_kept_snapshot() >= 2
        tool.backend.close()
    server.stop()
    checked = verify_cmd(server.data)
    assert checked.returncode == 0, checked.stdout


def test_kill_9_during_an_online_prune_then_prune_again_finishes(server: ServerProcess) -> None:
    with backend(server) as a:
        for i in range(4):
            files = {f"f{j}": secrets.token_bytes(200) for j in range(400)}
            upload_snapshot(a, f"2026-11-0{i + 1}T000000Z", T0 + i * DAY_NS, files)
    server.stop()
    age_everything(server.data)
    server.start()
    log_path = server.data.parent / f"{server.data.name}.log{server._starts}"
    asked = threading.Thread(
        target=lambda: _quietly(post_prune, server, ADMIN, NS_A, {"keep_last": 1, "grace": "4s"})
    )
    asked.start()
    deadline = time.monotonic() + 30
    while "forgot snapshot" not in log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "prune never started"
        time.sleep(0.005)
    server.kill()
    asked.join(timeout=30)
    checked = verify_cmd(server.data)
    assert checked.returncode == 0, checked.stdout
    server.start()
    answer = post_prune(server, ADMIN, NS_A, {"keep_last": 1, "grace": "4s"})
    assert answer.status_code == 200, answer.text
    with backend(server) as a:
        assert [r for r in a.list_refs() if r.startswith("snapshot.")] == [
            "snapshot.2026-11-04T000000Z"
        ]
        assert a.stats()["objects"] == 400 + 3
    server.stop()
    assert verify_cmd(server.data).returncode == 0


def _quietly(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except requests.RequestException:
        pass  # the server was killed under the request


class PeerServer(ServerProcess):
    """A server on a fixed port (so two can name each other as --peer before starting)."""

    def __init__(self, data: Path, tokens: Path, port: int, peer_port: int, token: Path) -> None:
        super().__init__(data, tokens)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.extra = (
            "--listen", f"127.0.0.1:{port}", "--prune-min-grace", MIN_GRACE,
            "--peer", f"http://127.0.0.1:{peer_port}", "--peer-token-file", str(token),
            "--peer-interval", "0.2",
        )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshots(server: ServerProcess) -> list[str]:
    with backend(server) as b:
        return [r for r in b.list_refs() if r.startswith("snapshot.")]


def _wait(cond: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_pair_replicating_both_ways_converges_after_a_prune_and_fails_over(
    tmp_path: Path,
) -> None:
    tokens = write_tokens(tmp_path / "tokens.json")
    peer_token = tmp_path / "peer-token"
    peer_token.write_text(REPLICATE + "\n")
    pa, pb = _free_port(), _free_port()
    a = PeerServer(tmp_path / "a", tokens, pa, pb, peer_token)
    b = PeerServer(tmp_path / "b", tokens, pb, pa, peer_token)
    a.start()
    b.start()
    try:
        contents: dict[str, dict[str, bytes]] = {}
        all_ids: dict[str, dict[str, str]] = {}
        with backend(a) as tool:
            for i in range(3):
                name = f"2026-11-0{i + 1}T000000Z"
                contents[name] = {f"f{j}": secrets.token_bytes(500) for j in range(6)}
                all_ids[name] = upload_snapshot(tool, name, T0 + i * DAY_NS, contents[name])
        _wait(lambda: len(_snapshots(b)) == 3)
        time.sleep(5)  # older than the 4 s grace on both servers
        answer = post_prune(a, ADMIN, NS_A, {"keep_last": 1, "grace": "4s"})
        assert answer.status_code == 200 and len(answer.json()["forgotten"]) == 2
        # B's replicator offers the two refs back, A refuses (410), B forgets them too
        _wait(lambda: _snapshots(b) == ["snapshot.2026-11-03T000000Z"])
        time.sleep(1)  # several more replication passes: nothing comes back to A
        assert _snapshots(a) == ["snapshot.2026-11-03T000000Z"]
        on_b = post_prune(b, ADMIN, NS_A, {"keep_last": 1, "grace": "4s"})
        assert on_b.status_code == 200 and on_b.json()["mappings_removed"] > 0, on_b.text
        # failover: A dies; the kept snapshot restores byte-exact from B alone
        a.kill()
        kept = "2026-11-03T000000Z"
        with backend(b) as tool:
            for fname, content in contents[kept].items():
                assert decompress_chunk(tool.load(all_ids[kept][fname])) == content
            for tree in ("<root>", "<sub>", "<top>"):
                assert decompress_chunk(tool.load(all_ids[kept][tree]))
        b.stop()
        assert verify_cmd(b.data).returncode == 0
        assert verify_cmd(a.data).returncode == 0
    finally:
        a.stop()
        b.stop()


def test_a_pruned_ref_stays_pruned_and_tools_can_ask_which_are(server: ServerProcess) -> None:
    """After a prune no token but an admin's puts a forgotten ref back (a tool re-sending
    from its local store would undo the prune), and `refs:forgotten` says which are gone."""
    names = [f"2026-11-0{i + 1}T000000Z" for i in range(3)]
    with backend(server) as a:
        records = {}
        for i, name in enumerate(names):
            upload_snapshot(a, name, T0 + i * DAY_NS, {"f": secrets.token_bytes(100)})
            records[name] = a.get_ref(f"snapshot.{name}")
    age_everything(server.data)
    answer = post_prune(server, ADMIN, NS_A, {"keep_last": 1, "grace": MIN_GRACE})
    assert answer.status_code == 200, answer.text
    assert answer.json()["forgotten"] == names[:2]
    asked = [f"snapshot.{n}" for n in names] + ["snapshot.2020-01-01T000000Z"]
    with backend(server) as a:
        assert a.forgotten_refs(asked) == [f"snapshot.{n}" for n in names[:2]]
        with pytest.raises(ForgottenError):
            a.put_ref(f"snapshot.{names[0]}", records[names[0]])
        a.put_ref(f"snapshot.{names[2]}", records[names[2]])  # the kept one: same bytes, fine
        assert sorted(r for r in a.list_refs() if r.startswith("snapshot.")) == [
            f"snapshot.{names[2]}"
        ]
    with backend(server, NS_A, REPLICATE) as r, pytest.raises(ForgottenError):
        r.put_ref(f"snapshot.{names[1]}", records[names[1]])
    headers = {"Authorization": f"Bearer {TOOL_A}"}
    url = f"{server.url}/v2/{NS_A}/refs:forgotten"
    for body, status in (
        ({"names": ["../x"]}, 400),
        ({"names": "snapshot.x"}, 400),
        ([1], 400),
        ({"names": ["a"] * 10_001}, 413),
    ):
        got = requests.post(url, json=body, headers=headers, timeout=30)
        assert got.status_code == status, (body, got.text)
    assert requests.post(url, json={"names": []}, timeout=30).status_code == 401
    other = f"{server.url}/v2/{NS_B}/refs:forgotten"
    assert requests.post(other, json={"names": []}, headers=headers, timeout=30).status_code == 403
