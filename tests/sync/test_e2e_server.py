"""End to end: real mounts, real dpmsfs-server processes on loopback, real kill -9, a
fault-injecting TCP proxy between them. After every fault: the equipment's writes through
the mount never failed, sync converges by itself, every snapshot on the server is fully
readable (every object fetched and verified through the Backend), and `dpmsfs-server
verify` is clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpmsfs import mountinfo
from remote.http_backend import HttpBackend
from tests.fault.conftest import needs_fuse
from tests.mount.conftest import force_unmount, wait_for
from tests.remote.serverproc import ADMIN, NS_A, TOOL_A, ServerProcess, server_cmd, write_tokens
from tests.sync.faultproxy import FaultProxy
from tests.sync.mounts import SyncMount, sync_config
from tests.sync.util import assert_refs_complete, read_snapshot, snapshots_on


def _v2_server_available() -> bool:
    import inspect

    return "server_id" in dict(inspect.getmembers(HttpBackend))


pytestmark = [
    needs_fuse,
    pytest.mark.skipif(not _v2_server_available(), reason="needs the v2 HttpBackend/server"),
]


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    base = workdir.parent
    proc = ServerProcess(base / "srv", write_tokens(base / "tokens.json"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    host, port = server.url.rsplit("//", 1)[1].split(":")
    p = FaultProxy(host, int(port))
    yield p
    p.close()


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPMSFS_SYNC_READ_TIMEOUT", "3")


def client(url: str, ns: str = NS_A, token: str = TOOL_A) -> HttpBackend:
    return HttpBackend([url], ns, token)


def server_verify(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("verify", "--data", str(server.data)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def write_files(root: Path, tag: str, count: int, size: int) -> dict[str, bytes]:
    written = {}
    (root / tag).mkdir(exist_ok=True)
    for i in range(count):
        data = os.urandom(size)
        (root / tag / f"f{i}.bin").write_bytes(data)  # raises if a write ever fails
        written[f"{tag}/f{i}.bin"] = data
    return written


def converge(mount: SyncMount, timeout: float = 120) -> None:
    result = mount.cli("sync", "--snapshot", "--wait", "--timeout", str(timeout))
    assert result.returncode == 0, result.stderr + mount.log()[-3000:]


def check_server(url: str, server: ServerProcess, expect: dict[str, bytes]) -> None:
    backend = client(url)
    try:
        assert assert_refs_complete(backend) >= 1
        latest = sorted(snapshots_on(backend))[-1]
        files = read_snapshot(backend, latest)
        for path, data in expect.items():
            assert files[path] == data, path
    finally:
        backend.close()
    result = server_verify(server)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kill9_daemon_and_server_mid_sync(
    workdir: Path, store_dir: Path, server: ServerProcess, proxy: FaultProxy
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [proxy.url], TOOL_A, NS_A,
                      sync_bandwidth_limit=2_000_000)  # fmt: skip
    expect = write_files(workdir, "big", 8, 1_000_000)
    mount = SyncMount(workdir, cfg)
    try:
        mount.cli("snapshot")
        wait_for(lambda: mount.sync_status()["uploaded"]["bytes"] > 500_000, timeout=60,
                 what="upload under way")  # fmt: skip
        os.kill(mount.proc.pid, signal.SIGKILL)
        mount.proc.wait(10)
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=10, what="fail-open")
        assert snapshots_on(client(server.url)) == []  # no ref before its objects
    finally:
        mount.stop()
    mount = SyncMount(workdir, cfg)  # same store: resumes from its durable queue
    try:
        expect |= write_files(workdir, "more", 4, 1_000_000)
        mount.cli("snapshot")
        wait_for(lambda: mount.sync_status()["uploaded"]["bytes"] > 300_000, timeout=60,
                 what="second upload under way")  # fmt: skip
        server.kill()  # kill -9 mid-upload
        expect |= write_files(workdir, "during-outage", 5, 20_000)
        assert_refs_complete_on_disk = server_verify(server)
        assert assert_refs_complete_on_disk.returncode == 0, assert_refs_complete_on_disk.stdout
        server.start()
        host, port = server.url.rsplit("//", 1)[1].split(":")
        proxy.target = (host, int(port))
        converge(mount)
        status = mount.sync_status()
        assert status["reachable"] and status["queue"]["snapshots"] == 0
        # Resumed, not restarted: about the tree's bytes went out, not twice that.
        assert status["uploaded"]["bytes"] < 14_000_000
    finally:
        mount.stop()
    check_server(server.url, server, expect)


@pytest.mark.parametrize("mode", ["drop", "delay", "truncate", "reset", "refuse"])
def test_network_faults(
    mode: str, workdir: Path, store_dir: Path, server: ServerProcess, proxy: FaultProxy
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [proxy.url], TOOL_A, NS_A)
    mount = SyncMount(workdir, cfg)
    try:
        expect = write_files(workdir, "before", 5, 200_000)
        converge(mount)
        proxy.mode = mode
        expect |= write_files(workdir, "during", 10, 300_000)
        mount.cli("snapshot")
        time.sleep(4)
        if mode in ("drop", "reset", "refuse", "truncate"):
            status = mount.sync_status()
            assert status["queue"]["snapshots"] >= 1, status
        proxy.mode = "pass"
        converge(mount, timeout=180)
    finally:
        mount.stop()
    check_server(server.url, server, expect)


def test_corrupt_chunk_on_server_is_uploaded_again(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A)
    mount = SyncMount(workdir, cfg)
    try:
        expect = write_files(workdir, "d", 3, 400_000)
        converge(mount)
        blobs = sorted((p for p in server.data.rglob("*") if p.is_file()),
                       key=lambda p: p.stat().st_size)  # fmt: skip
        victim = blobs[-1]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
        assert server_verify(server).returncode != 0  # found, quarantined
        result = mount.cli("sync", "--recheck", "--wait", "--timeout", "60")
        assert result.returncode == 0, result.stderr
    finally:
        mount.stop()
    check_server(server.url, server, expect)


def test_restored_copy_mounted_with_new_store_uploads_nothing(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A)
    mount = SyncMount(workdir, cfg)
    try:
        write_files(workdir, "pgm", 20, 100_000)
        converge(mount)
        first = mount.sync_status()["uploaded"]["bytes"]
        assert first > 2_000_000
    finally:
        mount.stop()
    copy = workdir.parent / "restored"
    subprocess.run(["cp", "-a", str(workdir), str(copy)], check=True)
    cfg2 = sync_config(workdir.parent / "b.toml", workdir.parent / "store2", [server.url],
                       TOOL_A, NS_A)  # fmt: skip
    again = SyncMount(copy, cfg2)
    try:
        converge(again)
        status = again.sync_status()
        assert status["uploaded"]["snapshots"] >= 1
        assert status["uploaded"]["bytes"] < 20_000, status  # trees at most, no content
    finally:
        again.stop()
        force_unmount(copy)


def test_server_disk_full_waits_and_converges(workdir: Path, store_dir: Path) -> None:
    base = workdir.parent
    data = base / "small"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(data)], check=True)
    srv = ServerProcess(data / "srv", write_tokens(base / "tokens.json"))
    try:
        srv.start()
        cfg = sync_config(base / "a.toml", store_dir, [srv.url], TOOL_A, NS_A)
        mount = SyncMount(workdir, cfg)
        try:
            expect = write_files(workdir, "d", 12, 1_000_000)  # twice the server's disk
            mount.cli("snapshot")
            wait_for(lambda: mount.sync_status()["last_error"], timeout=60, what="507 seen")
            status = mount.sync_status()
            assert status["queue"]["snapshots"] >= 1 and status["reachable"], status
            expect |= write_files(workdir, "still", 3, 10_000)  # the mount never fails
            subprocess.run(["mount", "-o", "remount,size=64m", str(data)], check=True)
            converge(mount, timeout=180)
        finally:
            mount.stop()
        check_server(srv.url, srv, expect)
    finally:
        srv.stop()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_admin_token_sees_the_tool(server: ServerProcess) -> None:
    """The tokens of serverproc.py work for the namespaces the tests use."""
    admin = HttpBackend([server.url], NS_A, ADMIN)
    try:
        assert admin.list_refs() == []
    finally:
        admin.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_snapshots(store: Path) -> list[str]:
    from dpmsfs.store.store import Store

    with Store.open(str(store), readonly=True) as opened:
        return [r.name for r in opened.list_snapshots()]


def test_ha_failover_and_failback(workdir: Path, store_dir: Path) -> None:
    """Two real servers replicating both ways; two tools. Kill -9 the primary mid-sync:
    the tools converge on the peer; restart the primary: the pair converges; every snapshot
    of every tool is fully readable from either server, and both scrub clean."""
    from tests.remote import serverproc
    from tests.remote.serverproc import NS_B, TOOL_B

    replicate_token: str = getattr(serverproc, "REPLICATE", "")  # the v2 server's tokens

    base = workdir.parent
    tokens = write_tokens(base / "tokens.json")
    peer_token = base / "peer-token"
    peer_token.write_text(replicate_token + "\n")
    port_a, port_b = _free_port(), _free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"

    def replicating(listen: int, peer: str) -> tuple[str, ...]:
        return ("--listen", f"127.0.0.1:{listen}", "--peer", peer,
                "--peer-token-file", str(peer_token), "--peer-interval", "0.2")  # fmt: skip

    a = ServerProcess(base / "srv-a", tokens, replicating(port_a, url_b)).start()
    b = ServerProcess(base / "srv-b", tokens, replicating(port_b, url_a)).start()
    work2 = base / "work2"
    work2.mkdir()
    store2 = base / "store2"
    tools = [
        (workdir, store_dir, TOOL_A, NS_A),
        (work2, store2, TOOL_B, NS_B),
    ]
    mounts = []
    try:
        for i, (work, store, token, ns) in enumerate(tools):
            cfg = sync_config(base / f"t{i}.toml", store, [url_a, url_b], token, ns,
                              sync_bandwidth_limit=3_000_000)  # fmt: skip
            mounts.append(SyncMount(work, cfg))
        for (work, *_), mount in zip(tools, mounts, strict=True):
            write_files(work, "first", 4, 200_000)
            converge(mount)
            assert mount.sync_status()["server_url"] == url_a
        for (work, *_), mount in zip(tools, mounts, strict=True):
            write_files(work, "big", 6, 1_000_000)
            mount.cli("snapshot")
        wait_for(lambda: all(m.sync_status()["queue"]["objects"] > 0 or
                             m.sync_status()["uploaded"]["bytes"] > 1_500_000 for m in mounts),
                 timeout=60, what="second sync under way")  # fmt: skip
        a.kill()  # the primary dies mid-sync
        for (work, *_), mount in zip(tools, mounts, strict=True):
            write_files(work, "outage", 3, 50_000)  # the equipment writes on
            converge(mount, timeout=240)
            status = mount.sync_status()
            assert status["server_url"] == url_b and status["server_id"], status
        a.start()  # fail-back: the pair converges by replication

        converged: dict[str, list[str]] = {}

        def pair_converged() -> bool:
            for _, store, token, ns in tools:
                with HttpBackend([url_a], ns, token) as ca, HttpBackend([url_b], ns, token) as cb:
                    want = _local_snapshots(store)
                    if not set(want) <= set(snapshots_on(ca)) & set(snapshots_on(cb)):
                        return False
                    converged[ns] = want
            return True

        wait_for(pair_converged, timeout=240, what="the pair to converge")
        # `converged`: what the pair converged on. Stopping a mount takes one more (shutdown)
        # snapshot, which may stay queued locally until the next start: not part of the check.
    finally:
        for mount in mounts:
            mount.stop()
    try:
        for _, _store, token, ns in tools:
            names = converged[ns]
            for url in (url_a, url_b):
                with HttpBackend([url], ns, token) as backend:
                    assert assert_refs_complete(backend) >= len(names)
                    for name in names:
                        read_snapshot(backend, name)  # every tree and chunk, verified
        for server in (a, b):
            result = server_verify(server)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        a.stop()
        b.stop()
        force_unmount(work2)


def restore_cli(server: ServerProcess, token_file: Path, snapshot: str, target: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", "restore", "--server", server.url,
         "--tool", NS_A, "--token-file", str(token_file), "--snapshot", snapshot,
         "--to", str(target)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_damaged_blob_is_uploaded_again_by_a_normal_pass(
    workdir: Path, store_dir: Path, server: ServerProcess
) -> None:
    """No --recheck: the daemon asks `objects:damaged` in every pass and re-uploads what
    `dpmsfs-server verify` quarantined; then every snapshot restores byte-exact."""
    cfg = sync_config(workdir.parent / "a.toml", store_dir, [server.url], TOOL_A, NS_A)
    mount = SyncMount(workdir, cfg)
    try:
        first = write_files(workdir, "d", 3, 400_000)
        converge(mount)
        second = {**first, **write_files(workdir, "e", 2, 300_000)}
        converge(mount)
        blobs = sorted((p for p in (server.data / "pool").rglob("*") if p.is_file()),
                       key=lambda p: p.stat().st_size)  # fmt: skip
        victim = blobs[-1]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # payload: the server's cheap send checks cannot see it
        victim.write_bytes(bytes(raw))
        assert server_verify(server).returncode != 0  # found, quarantined
        assert not victim.exists()
        result = mount.cli("sync", "--wait", "--timeout", "60")  # a normal pass
        assert result.returncode == 0, result.stderr
        wait_for(victim.exists, timeout=30, what="the damaged blob uploaded again")
        assert victim.read_bytes() != bytes(raw)
    finally:
        mount.stop()
    check_server(server.url, server, second)
    backend = client(server.url)
    try:
        names = sorted(snapshots_on(backend))
    finally:
        backend.close()
    assert len(names) >= 2
    token_file = workdir.parent / "a.token"
    for index, name in enumerate(names):
        target = workdir.parent / f"restored-{index}"
        restore_cli(server, token_file, name, target)
        got = {
            str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*.bin") if p.is_file()
        }
        # files were only ever added: each snapshot holds some of them, byte-exact
        assert all(second[path] == data for path, data in got.items()), name
        if index == len(names) - 1:
            assert got == second
        assert set(first) <= set(got) or index < len(names) - 1
