#!/usr/bin/env python3
"""Sync benchmark (issue 10): dpmsfs to dpmsfs-server over loopback, next to its peers.

Usage:  .venv/bin/python scripts/bench_sync.py [--size-mb 2000] [--only W,...] [--json F]

Data from /work/shared/bench/mkdataset.py (`init --seed 42 --tool N`), made once under
--workdir-base and copied for every run. A real `dpmsfs-server` child on 127.0.0.1.

Workloads:
  first      first sync of the tree. dpmsfs: mount with sync on, `dpmsfs snapshot` (the
             import), then `dpmsfs sync --wait`: MB/s of the sync alone and of import +
             sync. Peers: restic to `rclone serve restic` (first `restic backup`) and
             borg over ssh to a private sshd on localhost (`borg create`, zstd,3, no
             encryption); MB/s = tree bytes / backup time.
  day        `mkdataset.py mutate --day 1`: bytes dpmsfs uploads (frame bytes the server
             stored as new); the peers' repository growth for the same change.
  tool2      a second tool's tree (`--tool 2`, sharing pgm/ and bin/): bytes it uploads and
             the server's data directory growth (cross-tool dedup).
  twelve     twelve small tools (`--small-mb` each) syncing at once: wall time, MB/s.
  rpo        files closed through the mount every few seconds while sync runs; for each,
             the time until a snapshot containing it is listed on the server (a ref
             exists only once everything it references does): p50/p90/p100.
  latency    create/stat/tar through the mount during a first sync, and idle
             (as bench_versioning.py does during the import).
  restore    hook: `dpmsfs restore --server ...` (srvrestore branch) onto an empty
             directory vs `restic restore`; skipped while the CLI has no --server.

The machine may be shared: figures are relative within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_versioning as bv  # noqa: E402

MB = 10**6
WORKLOADS = ("first", "day", "tool2", "twelve", "rpo", "latency", "restore")
PASSWORD = "bench-sync"
log = bv.log


# --- environment ----------------------------------------------------------------------


def ensure_packages() -> dict[str, str]:
    """restic, rclone, borg, sshd from Debian (installed when missing)."""
    wanted = {
        "restic": "restic",
        "rclone": "rclone",
        "borg": "borgbackup",
        "sshd": "openssh-server",
    }
    missing = [
        pkg
        for cmd, pkg in wanted.items()
        if shutil.which(cmd) is None and not Path(f"/usr/sbin/{cmd}").exists()
    ]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    versions = {}
    for cmd in (["restic", "version"], ["rclone", "version"], ["borg", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        versions[cmd[0]] = (out.strip().splitlines() or ["?"])[0]
    return versions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Server:
    """A dpmsfs-server child with one admin token and a token per tool namespace."""

    def __init__(self, base: Path, tools: list[str]) -> None:
        self.data = base / "server-data"
        self.data.mkdir(parents=True)
        self.tokens = {tool: "tok-" + secrets.token_hex(16) for tool in tools}
        self.admin = "adm-" + secrets.token_hex(16)
        entries: dict[str, dict[str, Any]] = {self.admin: {"role": "admin", "namespaces": "*"}}
        for tool, token in self.tokens.items():
            entries[token] = {"role": "tool", "namespaces": [tool]}
        doc = {"tokens": entries}
        self.tokens_file = base / "tokens.json"
        self.tokens_file.write_text(json.dumps(doc))
        ready = base / "server.ready"
        self._log = open(base / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remote.server_main",
                "--data",
                str(self.data),
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                str(self.tokens_file),
                "--ready-file",
                str(ready),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dpmsfs-server did not start: {(base / 'server.log').read_text()}"
                )
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]
        self.base = base

    def token_file(self, tool: str) -> Path:
        path = self.base / f"{tool}.token"
        path.write_text(self.tokens[tool] + "\n")
        os.chmod(path, 0o600)
        return path

    def stored_bytes(self) -> int:
        return bv.du_bytes(self.data)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self._log.close()


class SyncMount(bv.Dpmsfs):
    """`dpmsfs mount --foreground` with sync on."""

    def __init__(
        self,
        work: Path,
        store: Path,
        log_path: Path,
        server: Server,
        tool: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        from dpmsfs import mountinfo
        from dpmsfs.config import Config

        self.work = work.resolve()
        self.store = store
        self.log_path = log_path
        self.socket = Config(workdir=self.work, store=store).control_socket
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "dpmsfs.cli.main",
            "--log-level",
            "INFO",
            "mount",
            "--foreground",
            "--store",
            str(store),
            "--server",
            server.url,
            "--token-file",
            str(server.token_file(tool)),
            "--tool-id",
            tool,
            *extra,
            str(self.work),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + bv.MOUNT_TIMEOUT
        try:
            while not mountinfo.is_dpmsfs_mount(self.work):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dpmsfs exited: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not mounted in time: {self.log_tail()}")
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise

    def sync_wait(self, timeout: float = 3600) -> float:
        start = time.monotonic()
        result = self.cli("sync", "--wait", "--timeout", str(timeout))
        if result.returncode != 0:
            raise RuntimeError(f"dpmsfs sync --wait failed: {result.stderr}\n{self.log_tail()}")
        return time.monotonic() - start

    def uploaded(self) -> dict[str, int]:
        return dict(self.status()["sync"]["uploaded"])


@contextlib.contextmanager
def sync_mount(
    work: Path, store: Path, log_path: Path, server: Server, tool: str, extra: tuple[str, ...] = ()
) -> Iterator[SyncMount]:
    mount = SyncMount(work, store, log_path, server, tool, extra)
    try:
        yield mount
    finally:
        mount.stop()


# --- peers ----------------------------------------------------------------------------


class RcloneRestic:
    """`rclone serve restic` on loopback and a restic repository in it."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "rclone-data"
        self.dir.mkdir()
        self.port = free_port()
        self._log = open(base / "rclone.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{self.port}", str(self.dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{self.port}/repo",
        }
        subprocess.run(["restic", "init"], env=self.env, check=True, capture_output=True)

    def backup(self, path: Path) -> float:
        return bv.timed(["restic", "backup", "-q", str(path)], env=self.env)

    def restore(self, target: Path) -> float:
        return bv.timed(["restic", "restore", "latest", "--target", str(target)], env=self.env)

    def stored_bytes(self) -> int:
        return bv.du_bytes(self.dir)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


class BorgSsh:
    """A private sshd on a loopback port (own host key, own authorized key) and a borg
    repository reached through it."""

    def __init__(self, base: Path) -> None:
        self.base = base / "borg-ssh"
        self.base.mkdir()
        key, host_key = self.base / "id", self.base / "host"
        for path in (key, host_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True
            )
        auth = self.base / "authorized_keys"
        shutil.copy(f"{key}.pub", auth)
        os.chmod(auth, 0o600)
        self.port = free_port()
        config = self.base / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\nPermitRootLogin yes\n"
            f"StrictModes no\nPidFile {self.base / 'sshd.pid'}\nUsePAM no\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        rsh = (
            f"ssh -i {key} -p {self.port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )
        self.repo_dir = self.base / "repo"
        self.repo = f"ssh://root@127.0.0.1:{self.port}{self.repo_dir}"
        self.env = {
            **os.environ,
            "BORG_RSH": rsh,
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        subprocess.run(
            ["borg", "init", "--encryption", "none", self.repo],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.archives = 0

    def backup(self, path: Path) -> float:
        self.archives += 1
        return bv.timed(
            [
                "borg",
                "create",
                "--compression",
                "zstd,3",
                f"{self.repo}::a{self.archives}",
                str(path),
            ],
            env=self.env,
        )

    def stored_bytes(self) -> int:
        return bv.du_bytes(self.repo_dir)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# --- workloads ------------------------------------------------------------------------


def run_first_and_day(
    run: Path, data: Path, server: Server, figures: dict[str, Any], wanted: set[str]
) -> None:
    files, tree = bv.tree_bytes(data)
    figures["tree"] = {"files": files, "bytes": tree}
    work, store = run / "t1" / "work", run / "t1" / "store"
    work.parent.mkdir(parents=True)
    bv.copy_tree(data, work)
    bv.evict(work)
    with sync_mount(work, store, run / "t1" / "mount.log", server, "tool1") as mount:
        start = time.monotonic()
        mount.snapshot_cli()
        imported = time.monotonic() - start
        synced = mount.sync_wait()
        up = mount.uploaded()
        figures["dpmsfs_first"] = {
            "import_s": imported,
            "sync_s": synced,
            "sync_mb_s": tree / MB / synced,
            "import_and_sync_mb_s": tree / MB / (imported + synced),
            "uploaded_bytes": up["bytes"],
            "server_bytes": server.stored_bytes(),
        }
        log(f"dpmsfs first sync: {figures['dpmsfs_first']}")
        if "day" in wanted:
            before = up["bytes"]
            bv.mutate(work)
            mount.snapshot_cli()
            mount.sync_wait()
            figures["dpmsfs_day"] = {"uploaded_bytes": mount.uploaded()["bytes"] - before}
            log(f"dpmsfs day: {figures['dpmsfs_day']}")
        for line in mount.problems()[:10]:
            figures.setdefault("notes", []).append(f"dpmsfs log: {line}")


def run_peers(run: Path, data: Path, figures: dict[str, Any], wanted: set[str]) -> None:
    _, tree = bv.tree_bytes(data)
    for name, make in (("restic_rclone", RcloneRestic), ("borg_ssh", BorgSsh)):
        copy = run / name / "work"
        copy.parent.mkdir(parents=True)
        bv.copy_tree(data, copy)
        bv.evict(copy)
        peer = make(run / name)
        try:
            seconds = peer.backup(copy)
            stored = peer.stored_bytes()
            figures[f"{name}_first"] = {
                "backup_s": seconds,
                "mb_s": tree / MB / seconds,
                "stored_bytes": stored,
            }
            log(f"{name} first: {figures[f'{name}_first']}")
            if isinstance(peer, RcloneRestic) and "restore" in wanted:
                seconds = peer.restore(run / name / "restored")
                figures["restic_restore"] = {"s": seconds, "mb_s": tree / MB / seconds}
                shutil.rmtree(run / name / "restored", ignore_errors=True)
            if "day" in wanted:
                bv.mutate(copy)
                peer.backup(copy)
                figures[f"{name}_day"] = {"stored_growth": peer.stored_bytes() - stored}
        except Exception as exc:
            log(f"{name} failed: {exc}")
            figures.setdefault("failed", {})[name] = str(exc)[-2000:]
        finally:
            peer.stop()
        shutil.rmtree(copy, ignore_errors=True)


def run_tool2(run: Path, base: Path, size_mb: int, server: Server, figures: dict[str, Any]) -> None:
    """Tool 1's tree first (unless the `first` workload put it there), then tool 2's."""
    if "dpmsfs_first" not in figures:
        data1 = dataset(base, size_mb, tool=1)
        work1, store1 = run / "t2-base" / "work", run / "t2-base" / "store"
        work1.parent.mkdir(parents=True)
        bv.copy_tree(data1, work1)
        with sync_mount(work1, store1, run / "t2-base" / "mount.log", server, "tool1") as m:
            m.snapshot_cli()
            m.sync_wait()
            figures["dpmsfs_tool1_for_tool2"] = {"uploaded_bytes": m.uploaded()["bytes"]}
        shutil.rmtree(work1.parent, ignore_errors=True)
    data2 = dataset(base, size_mb, tool=2)
    work, store = run / "t2" / "work", run / "t2" / "store"
    work.parent.mkdir(parents=True)
    bv.copy_tree(data2, work)
    stored = server.stored_bytes()
    with sync_mount(work, store, run / "t2" / "mount.log", server, "tool2") as mount:
        mount.snapshot_cli()
        seconds = mount.sync_wait()
        up = mount.uploaded()
    _, tree = bv.tree_bytes(data2)
    figures["dpmsfs_tool2"] = {
        "tree_bytes": tree,
        "uploaded_bytes": up["bytes"],
        "server_growth": server.stored_bytes() - stored,
        "sync_s": seconds,
    }
    log(f"dpmsfs tool2: {figures['dpmsfs_tool2']}")


def run_twelve(
    run: Path, base: Path, small_mb: int, server: Server, figures: dict[str, Any]
) -> None:
    mounts: list[SyncMount] = []
    total = 0
    try:
        for i in range(1, 13):
            data = dataset(base, small_mb, tool=i)
            total += bv.tree_bytes(data)[1]
            work, store = run / f"s{i}" / "work", run / f"s{i}" / "store"
            work.parent.mkdir(parents=True)
            bv.copy_tree(data, work)
            mounts.append(SyncMount(work, store, run / f"s{i}" / "mount.log", server, f"small{i}"))
        threads = [threading.Thread(target=m.snapshot_cli) for m in mounts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        start = time.monotonic()
        threads = [threading.Thread(target=m.sync_wait) for m in mounts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - start
        figures["dpmsfs_twelve"] = {
            "tools": 12,
            "bytes": total,
            "wall_s": seconds,
            "mb_s": total / MB / seconds,
        }
        log(f"dpmsfs twelve: {figures['dpmsfs_twelve']}")
    finally:
        for m in mounts:
            m.stop()


def run_rpo(run: Path, server: Server, files: int, every: float, figures: dict[str, Any]) -> None:
    """Close a file every `every` s; when does a snapshot holding it appear on the server?"""
    from remote.http_backend import HttpBackend

    work, store = run / "rpo" / "work", run / "rpo" / "store"
    work.mkdir(parents=True)
    (work / "seed.txt").write_text("seed")
    closed: dict[str, float] = {}
    seen: dict[str, float] = {}  # ref -> first time listed
    stop = threading.Event()
    client = HttpBackend([server.url], "rpo", server.tokens["rpo"])

    def watch() -> None:
        while not stop.is_set():
            for ref in client.list_refs():
                seen.setdefault(ref, time.time())
            stop.wait(0.5)

    with sync_mount(work, store, run / "rpo" / "mount.log", server, "rpo"):
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for i in range(files):
            path = work / f"datalog-{i:03d}.txt"
            with open(path, "w") as f:
                f.write(f"lot {i}\n" * 2000)
            closed[path.name] = time.time()
            time.sleep(every)
        deadline = time.time() + 600
        while time.time() < deadline and not _all_restorable(store, closed, seen):
            time.sleep(1)
        stop.set()
        watcher.join()
    delays = sorted(_restorable_delays(store, closed, seen).values())
    if delays:
        figures["dpmsfs_rpo"] = {
            "files": len(closed),
            "restorable": len(delays),
            "every_s": every,
            "p50_s": statistics.median(delays),
            "p90_s": delays[int(0.9 * (len(delays) - 1))],
            "p100_s": delays[-1],
        }
    log(f"dpmsfs rpo: {figures.get('dpmsfs_rpo')}")


def _restorable_delays(
    store: Path, closed: dict[str, float], seen: dict[str, float]
) -> dict[str, float]:
    from dpmsfs.store.store import Store

    out: dict[str, float] = {}
    with Store.open(str(store), readonly=True) as opened:
        for record in opened.list_snapshots():
            when = seen.get("snapshot." + record.name)
            if when is None:
                continue
            names = {e.name.decode() for e in opened.read_tree(record.root_tree_id)}
            for name, t in closed.items():
                if name in names and name not in out:
                    out[name] = max(0.0, when - t)
    return out


def _all_restorable(store: Path, closed: dict[str, float], seen: dict[str, float]) -> bool:
    try:
        return len(_restorable_delays(store, closed, seen)) == len(closed)
    except Exception:
        return False


def run_latency(run: Path, data: Path, server: Server, figures: dict[str, Any]) -> None:
    work, store = run / "lat" / "work", run / "lat" / "store"
    work.parent.mkdir(parents=True)
    bv.copy_tree(data, work)
    # Import first without sync (so the busy figures are the sync's, not the import's).
    with bv.mounted(work, store, run / "lat" / "import.log") as mount:
        mount.snapshot_cli()
    with sync_mount(work, store, run / "lat" / "mount.log", server, "lat") as mount:
        time.sleep(1.0)
        status = mount.status()["sync"]
        busy = bv.fuse_workloads(work, "busy", True)
        still = mount.status()["sync"]["queue"]["snapshots"] > 0
        mount.sync_wait()
        idle = bv.fuse_workloads(work, "idle", True)
    figures["dpmsfs_latency"] = {
        "busy": busy,
        "idle": idle,
        "sync_running_throughout": still,
        "queue_at_start": status["queue"],
    }
    log(f"dpmsfs latency: {figures['dpmsfs_latency']}")


def run_restore_hook(run: Path, server: Server, figures: dict[str, Any]) -> None:
    """`dpmsfs restore --server` once the srvrestore branch has landed."""
    help_text = subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", "restore", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if "--server" not in help_text:
        figures["dpmsfs_restore"] = "skipped: dpmsfs restore has no --server yet"
        return
    target = run / "restored"
    token = server.token_file("tool1")
    seconds = bv.timed(
        [
            sys.executable,
            "-m",
            "dpmsfs.cli.main",
            "restore",
            "--server",
            server.url,
            "--tool",
            "tool1",
            "--token-file",
            str(token),
            "--snapshot",
            "latest",
            "--to",
            str(target),
        ]
    )
    _, size = bv.tree_bytes(target)
    figures["dpmsfs_restore"] = {"s": seconds, "mb_s": size / MB / seconds}


def dataset(base: Path, size_mb: int, tool: int = 1) -> Path:
    path = base / f"dataset-{size_mb}mb-seed{bv.SEED}-tool{tool}"
    if not (path / ".mkdataset.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        log(f"generating {path} ({size_mb} MB)")
        cmd = [
            sys.executable,
            bv.MKDATASET,
            "init",
            str(path),
            "--size-mb",
            str(size_mb),
            "--seed",
            str(bv.SEED),
            "--tool",
            str(tool),
            "--jobs",
            str(os.cpu_count() or 2),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=2000, help="tree size (default 2000)")
    parser.add_argument("--small-mb", type=int, default=40, help="each of the twelve (40)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--no-peers", action="store_true", help="dpmsfs only")
    parser.add_argument("--rpo-files", type=int, default=20)
    parser.add_argument("--rpo-every", type=float, default=6.0, help="seconds between files")
    parser.add_argument("--workdir-base", default="/var/tmp/dpmsfs-bench-sync")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(WORKLOADS)
    unknown = wanted - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    base = Path(args.workdir_base)
    base.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "code": bv.code_state(),
        "size_mb": args.size_mb,
        "command": " ".join(sys.argv),
    }
    if not args.no_peers:
        figures["peers"] = ensure_packages()
    run = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    os.chmod(run, 0o755)
    tools = ["tool1", "tool2", "rpo", "lat"] + [f"small{i}" for i in range(1, 13)]
    (run / "server").mkdir()
    server = Server(run / "server", tools)
    try:
        data = dataset(base, args.size_mb)
        steps = [
            ("first", lambda: run_first_and_day(run, data, server, figures, wanted)),
            ("peers", lambda: run_peers(run, data, figures, wanted)),
            ("restore", lambda: run_restore_hook(run, server, figures)),
            ("tool2", lambda: run_tool2(run, base, args.size_mb, server, figures)),
            ("twelve", lambda: run_twelve(run, base, args.small_mb, server, figures)),
            ("rpo", lambda: run_rpo(run, server, args.rpo_files, args.rpo_every, figures)),
            ("latency", lambda: run_latency(run, data, server, figures)),
        ]
        for step, fn in steps:
            if step == "peers":
                if args.no_peers or not wanted & {"first", "day", "restore"}:
                    continue
            elif step not in wanted and not (step == "first" and "day" in wanted):
                continue
            try:
                fn()
            except Exception as exc:  # one failing workload must not hide the others
                log(f"{step} failed: {exc}")
                figures.setdefault("failed", {})[step] = str(exc)[-2000:]
    finally:
        server.stop()
        shutil.rmtree(run, ignore_errors=True)
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
